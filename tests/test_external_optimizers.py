"""pytorch-optimizer's optimizers by name: the same steps as the class used directly, the same checks as torch's,
the install line without the extra, Hydra files, monitors, and no folded clipping."""

from __future__ import annotations

import inspect
import math
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import pytorch_optimizer
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from lightning_optim import OPTIMIZERS, OptimConfigError, build_optimizer, validate_optim_config
from lightning_optim.callbacks import GradNormMonitor, LRMonitor
from lightning_optim.clipping.fused_step import folds_into_step
from lightning_optim.optim.external import INSTALL_LINE, WELL_KNOWN, external_optimizer_class, kwargs_switches
from lightning_optim.optim.registry import EXTRA_OPTIMIZER_INFOS
from tests import references, tb
from tests.cli.apps import TINY, run_app
from tests.models import MixinModel, RecordingModel, fit_logged, loader, trainer

CONF = Path(__file__).resolve().parents[1] / "lightning_optim" / "conf" / "optimizer"
EXTERNAL_FILES = sorted(
    path.stem for path in CONF.glob("*.yaml") if path.stem not in OPTIMIZERS and path.stem not in EXTRA_OPTIMIZER_INFOS
)
"""The Hydra files of pytorch-optimizer's optimizers: every optimizer file neither torch nor schedulefree names."""


def take_steps(model: torch.nn.Module, optimizer: torch.optim.Optimizer, steps: int = 3) -> None:
    inputs = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
    for _ in range(steps):
        optimizer.zero_grad()
        model(inputs).pow(2).sum().backward()
        optimizer.step()


def twin_models() -> tuple[torch.nn.Linear, torch.nn.Linear]:
    torch.manual_seed(0)
    ours, theirs = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


@pytest.mark.parametrize(
    ("name", "cls", "options"),
    [
        ("lion", pytorch_optimizer.Lion, {"lr": 0.01, "betas": [0.8, 0.95], "weight_decay": 0.1}),
        ("ADOPT", pytorch_optimizer.ADOPT, {"lr": 0.01, "weight_decouple": True, "weight_decay": 0.01}),
        ("prodigy", pytorch_optimizer.Prodigy, {"d0": 1e-3, "safeguard_warmup": True}),
        ("soap", pytorch_optimizer.SOAP, {"lr": 0.01, "precondition_frequency": 2}),
    ],
)
def test_named_optimizer_takes_the_steps_of_the_class_used_directly(name, cls, options):
    ours_model, their_model = twin_models()
    rules = [{"name": "bias", "params": "bias$", "weight_decay": 0.0}]
    ours = build_optimizer(ours_model, {"name": name, **options}, rules)
    tuples = {key: tuple(value) if isinstance(value, list) else value for key, value in options.items()}
    groups = [{"params": [their_model.bias], "weight_decay": 0.0}, {"params": [their_model.weight]}]
    theirs = cls(groups, **tuples)
    take_steps(ours_model, ours)
    take_steps(their_model, theirs)
    assert type(ours) is cls
    assert [group["name"] for group in ours.param_groups] == ["bias", "default"]
    for mine, reference in zip(ours_model.parameters(), their_model.parameters(), strict=True):
        torch.testing.assert_close(mine, reference, rtol=0, atol=0)


def test_torch_names_stay_torchs():
    assert "adamw" in pytorch_optimizer.get_supported_optimizers()
    model = torch.nn.Linear(2, 1)
    assert type(build_optimizer(model, {"name": "adamw"})) is torch.optim.AdamW
    assert type(build_optimizer(model, {"name": "radam"})) is torch.optim.RAdam
    assert pytorch_optimizer.load_optimizer("radam") is not torch.optim.RAdam


def test_misspelt_argument_is_refused_with_a_suggestion():
    # Lion takes **kwargs, which would swallow the typo: the check reads the named arguments only.
    with pytest.raises(OptimConfigError, match=r"optimizer\.beta = \[0\.9, 0\.99\] is not valid\. Did you mean "):
        validate_optim_config({"optimizer": {"name": "lion", "beta": [0.9, 0.99]}})
    with pytest.raises(OptimConfigError, match=r"Expected an argument of Lion: lr, betas, weight_decay, "):
        validate_optim_config({"optimizer": {"name": "lion", "beta": [0.9, 0.99]}})


def test_wrong_value_type_is_refused_from_the_signature():
    with pytest.raises(OptimConfigError, match=r"optimizer\.weight_decouple = 'yes' is not valid\. Expected true or"):
        validate_optim_config({"optimizer": {"name": "lion", "weight_decouple": "yes"}})
    with pytest.raises(OptimConfigError, match=r"optimizer\.precondition_frequency = 2\.5 is not valid"):
        validate_optim_config({"optimizer": {"name": "soap", "precondition_frequency": 2.5}})


def test_argument_without_default_is_required_before_anything_is_built():
    with pytest.raises(OptimConfigError, match=r"optimizer\.num_iterations is required by Ranger21"):
        validate_optim_config({"optimizer": {"name": "ranger21"}})
    model = torch.nn.Linear(2, 1)
    assert type(build_optimizer(model, {"name": "ranger21", "num_iterations": 10})) is pytorch_optimizer.Ranger21


def test_unknown_name_suggests_the_closest_of_both_packages():
    with pytest.raises(OptimConfigError, match=r"'lino' is not valid\. Did you mean 'lion'\? Expected one of: sgd,"):
        validate_optim_config({"optimizer": {"name": "lino"}})
    with pytest.raises(OptimConfigError, match=r"or one of pytorch-optimizer's own names"):
        validate_optim_config({"optimizer": {"name": "adamm"}})


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("lomo", r"an optimizer built from parameters: LOMO takes 'model' first"),
        ("schedulefreeadamw", r"an optimizer without train/eval modes: ScheduleFreeAdamW needs optimizer\.eval\(\)"),
        ("splus", r"an optimizer without train/eval modes: SPlus needs optimizer\.eval\(\)"),
    ],
)
def test_optimizers_the_mixin_cannot_run_correctly_are_refused(name, reason):
    with pytest.raises(OptimConfigError, match=rf"optimizer\.name = '{name}' is not valid\. Expected {reason}"):
        validate_optim_config({"optimizer": {"name": name}})


def test_without_the_extra_its_names_give_the_install_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "pytorch_optimizer", None)
    with pytest.raises(OptimConfigError) as error:
        validate_optim_config({"optimizer": {"name": "Lion"}})
    assert str(error.value) == (
        "optim_config.optimizer.name = 'Lion' is pytorch-optimizer's, which is not installed: "
        "pip install 'lightning-optim[pytorch-optimizer]'"
    )
    with pytest.raises(OptimConfigError, match=r"'lino' is not valid\. Did you mean 'lion'\?") as error:
        validate_optim_config({"optimizer": {"name": "lino"}})
    assert INSTALL_LINE in str(error.value)
    assert type(build_optimizer(torch.nn.Linear(2, 1), {"name": "adamw"})) is torch.optim.AdamW


def test_well_known_names_are_in_pytorch_optimizers_registry():
    assert set(WELL_KNOWN) <= set(pytorch_optimizer.get_supported_optimizers()) - set(OPTIMIZERS)


def test_a_torch_name_does_not_import_pytorch_optimizer():
    script = textwrap.dedent(
        """
        import sys
        import torch
        from lightning_optim import build_optimizer, validate_optim_config
        validate_optim_config({"optimizer": {"name": "adamw"}})
        build_optimizer(torch.nn.Linear(2, 1), {"name": "sgd", "lr": 0.1})
        assert "pytorch_optimizer" not in sys.modules
        validate_optim_config({"optimizer": {"name": "lion"}})
        assert "pytorch_optimizer" in sys.modules
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)


def buildable_classes() -> list[tuple[str, type[Any]]]:
    """Every pytorch-optimizer optimizer the mixin builds from parameters, with no required argument."""
    classes = []
    for name in pytorch_optimizer.get_supported_optimizers():
        if name in OPTIMIZERS:
            continue
        try:
            cls = external_optimizer_class(name, OPTIMIZERS)
        except OptimConfigError:
            continue
        parameters = list(inspect.signature(cls.__init__).parameters.values())[2:]
        if all(p.default is not p.empty for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)):
            classes.append((name, cls))
    return classes


def test_no_pytorch_optimizer_class_has_its_step_fold_clipping():
    built = []
    for name, cls in buildable_classes():
        fused = {"fused": True} if "fused" in inspect.signature(cls.__init__).parameters else {}
        # pytorch-optimizer's Muon variants need `use_muon` in every group; the others keep the key unread.
        group = {"params": [torch.nn.Parameter(torch.zeros(2, 2))], "use_muon": True}
        try:
            optimizer = cls([group], **fused)
        except Exception:  # a package (DeMo: einops), a shape (SpectralSphere: 2-D) or a GPU (fused FlashAdamW)
            continue
        assert not folds_into_step(optimizer), name
        built.append(name)
    assert len(built) > 90


@pytest.mark.parametrize("name", EXTERNAL_FILES)
def test_optimizer_file_writes_out_the_class_defaults(name):
    values = OmegaConf.to_container(OmegaConf.load(CONF / f"{name}.yaml"))
    assert values.pop("name") == name
    cls = external_optimizer_class(name, OPTIMIZERS)
    parameters = list(inspect.signature(cls.__init__).parameters.values())[2:]
    # A config file holds no Python function (ADOPT's clip_lambda) and no infinity (Prodigy's growth_rate).
    writable = [p for p in parameters if not callable(p.default) and p.default != math.inf]
    defaults = {p.name: p.default for p in writable if p.kind is p.POSITIONAL_OR_KEYWORD}
    assert list(values) == list(defaults), "every constructor argument written out, in signature order"
    assert {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()} == defaults


def test_hydra_composes_optimizer_lion_into_a_config_that_builds_lion():
    with initialize_config_module(version_base="1.3", config_module="lightning_optim.conf"):
        cfg = compose(config_name="train", overrides=["optimizer=lion", "optimizer.lr=3e-4"])
    section = OmegaConf.to_container(cfg.optimizer)
    assert section == {
        "name": "lion",
        "lr": 3e-4,
        "betas": [0.9, 0.99],
        "weight_decay": 0.0,
        "weight_decouple": True,
        "fixed_decay": False,
        "foreach": None,
        "maximize": False,
    }
    optimizer = build_optimizer(torch.nn.Linear(2, 1), section)
    assert type(optimizer) is pytorch_optimizer.Lion and optimizer.param_groups[0]["lr"] == 3e-4


class NormRecordingModel(MixinModel):
    """Records the total gradient norm before clipping, with torch's own function, at each optimizer step."""

    def __init__(self, optim_config: Any) -> None:
        super().__init__(optim_config)
        self.norms: list[float] = []
        self.folded: list[bool] = []

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.norms.append(float(torch.nn.utils.get_total_norm([p.grad for p in self.parameters()])))

    def on_train_batch_end(self, *args: Any) -> None:
        self.folded.append(self.clip_state.last.folded)


def test_monitors_log_lion_exactly(tmp_path):
    config = {
        "optimizer": {"name": "lion", "lr": 0.01, "betas": [0.8, 0.99], "weight_decay": 0.1},
        "scheduler": {"name": "warmup_linear", "warmup_steps": 2, "total_steps": 8},
    }
    model = NormRecordingModel(config)
    monitor = LRMonitor(log_momentum=True, log_weight_decay=True)
    logged = fit_logged(model, tmp_path, [monitor, GradNormMonitor()], gradient_clip_val=1.0)
    steps = list(range(8))
    lrs = [0.0, 0.005, 0.01, 0.01 * 5 / 6, 0.01 * 4 / 6, 0.01 * 3 / 6, 0.01 * 2 / 6, 0.01 / 6]
    assert logged["lr-Lion/default"] == [(k, tb.float32(lr)) for k, lr in zip(steps, lrs, strict=True)]
    assert logged["lr-Lion/default-momentum"] == [(k, tb.float32(0.8)) for k in steps]
    assert logged["lr-Lion/default-weight_decay"] == [(k, tb.float32(0.1)) for k in steps]
    assert model.folded == [False] * 8
    assert [step for step, _ in logged["grad_norm/total"]] == steps
    assert [value for _, value in logged["grad_norm/total"]] == [tb.float32(norm) for norm in model.norms]
    clipped = [n * min(1.0, 1.0 / (n + 1e-6)) for n in model.norms]  # torch's clip_grad_norm_ coefficient
    assert [value for _, value in logged["grad_norm/clipped"]] == pytest.approx(clipped, rel=1e-6)
    assert max(model.norms) > 1.0


def test_lightning_optim_train_runs_optimizer_lion_from_its_hydra_file(tmp_path):
    run_dir = tmp_path / "run"
    run_app("lightning_optim.cli.train", *TINY, "optimizer=lion", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    logged = {tag: dict(points) for tag, points in tb.scalars(run_dir / "tensorboard").items()}
    # The main job's warmup_cosine (warmup_ratio 0.1) over the tiny run's 3 steps, on Lion's default lr 1e-4.
    assert [logged["lr-Lion/default"][step] for step in range(3)] == pytest.approx([1e-4, 0.75e-4, 0.25e-4])
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["optim_config"]["optimizer"]["name"] == "lion"
    assert checkpoint["optimizer_states"][0]["param_groups"][0]["betas"] == [0.9, 0.99]


def test_prodigy_under_a_schedule_scales_its_own_step_size_as_a_plain_loop_does(tmp_path):
    # Prodigy's lr (1.0) multiplies the step size d it estimates; the schedule's factor multiplies that lr.
    config = {
        "optimizer": {"name": "prodigy", "safeguard_warmup": True},
        "scheduler": {"name": "warmup_cosine", "warmup_steps": 2, "total_steps": 8},
    }
    model = MixinModel(config)
    trainer(max_epochs=1).fit(model, loader())
    reference = RecordingModel()
    optimizer = pytorch_optimizer.Prodigy(reference.parameters(), safeguard_warmup=True)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: references.warmup_cosine(k, 1.0, 2, 8))
    for inputs, targets in loader():
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(reference(inputs), targets).backward()
        optimizer.step()
        schedule.step()
    assert [lrs[0] for lrs in model.lrs] == [references.warmup_cosine(k, 1.0, 2, 8) for k in range(8)]
    ours = model.trainer.optimizers[0].param_groups[0]
    assert ours["d"] == optimizer.param_groups[0]["d"] and ours["d"] > 1e-6  # d grew from d0
    for mine, theirs in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=0)


class SecondOrderModel(MixinModel):
    """What SophiaH and AdaHessian need: gradients that keep their graph, for Hessian-vector products."""

    def backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        loss.backward(create_graph=True)


def test_sophiah_with_norm_clipping_takes_the_steps_of_a_plain_loop():
    # The mixin's clipping must not put the clip coefficient into the gradients' graph (torch's clips under no_grad).
    model = SecondOrderModel({"optimizer": {"name": "sophiah", "lr": 0.01, "update_period": 2}})
    fitting = trainer(max_epochs=1, gradient_clip_val=1.0)
    torch.manual_seed(0)  # the Hutchinson probes are random
    fitting.fit(model, loader())
    reference = RecordingModel()
    optimizer = pytorch_optimizer.SophiaH(reference.parameters(), lr=0.01, update_period=2)
    torch.manual_seed(0)
    for inputs, targets in loader():
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(reference(inputs), targets).backward(create_graph=True)
        torch.nn.utils.clip_grad_norm_(reference.parameters(), 1.0)
        optimizer.step()
    for mine, theirs in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("name", "cls", "switches"),
    [
        ("lion", pytorch_optimizer.Lion, {"cautious": True, "use_gc": True}),
        ("adamp", pytorch_optimizer.AdamP, {"adanorm": True, "adanorm_r": 0.9, "use_gc": True}),
        ("adabelief", pytorch_optimizer.AdaBelief, {"adanorm": True, "adam_debias": True}),
        ("adopt", pytorch_optimizer.ADOPT, {"cautious": True, "stable_adamw": True}),
    ],
)
def test_kwargs_switches_reach_the_optimizer_as_the_class_used_directly(name, cls, switches):
    ours_model, their_model = twin_models()
    plain_model, _ = twin_models()
    ours = build_optimizer(ours_model, {"name": name, "lr": 0.05, **switches})
    theirs = cls(their_model.parameters(), lr=0.05, **switches)
    plain = cls(plain_model.parameters(), lr=0.05)
    for optimizer, model in [(ours, ours_model), (theirs, their_model), (plain, plain_model)]:
        take_steps(model, optimizer, steps=4)
    assert {key: ours.param_groups[0][key] for key in switches} == switches
    ours_params, their_params, plain_params = (list(m.parameters()) for m in (ours_model, their_model, plain_model))
    assert all(torch.equal(mine, reference) for mine, reference in zip(ours_params, their_params, strict=True))
    assert not all(torch.equal(mine, other) for mine, other in zip(ours_params, plain_params, strict=True))


def test_a_parameter_group_rule_sets_a_kwargs_switch_for_its_group():
    rules = [{"name": "bias", "params": "bias$", "cautious": True}]
    optimizer = build_optimizer(torch.nn.Linear(3, 2), {"name": "lion"}, rules)
    assert [group.get("cautious") for group in optimizer.param_groups] == [True, None]


@pytest.mark.parametrize(
    ("cls", "switches"),
    [
        (pytorch_optimizer.Lion, ["adanorm", "adanorm_r", "cautious", "use_gc"]),
        (pytorch_optimizer.AdamP, ["adam_debias", "adanorm", "adanorm_r", "cautious", "use_gc"]),
        (pytorch_optimizer.AdaBelief, ["adam_debias", "adanorm", "adanorm_r"]),
        (pytorch_optimizer.ADOPT, ["cautious", "stable_adamw"]),
        # MuonClip hands its **kwargs to Muon's constructor, which puts them into the defaults.
        (pytorch_optimizer.MuonClip, ["cautious", "qk_clip"]),
        # AdaBound reads adam_debias from its groups, but its constructor drops **kwargs: the switch would do nothing.
        (pytorch_optimizer.AdaBound, []),
        (pytorch_optimizer.SOAP, []),
        (torch.optim.AdamW, []),
    ],
)
def test_kwargs_switches_are_read_from_the_class_source(cls, switches):
    assert list(kwargs_switches(cls)) == switches


@pytest.mark.parametrize(
    ("optimizer", "message"),
    [
        (
            {"name": "lion", "cautios": True},
            r"optimizer\.cautios = True is not valid\. Did you mean 'cautious'\? Expected an argument of Lion: lr, "
            r".*; or a switch it reads through \*\*kwargs: adanorm, adanorm_r, cautious, use_gc\.",
        ),
        ({"name": "adabelief", "adanrom": True}, r"optimizer\.adanrom = True is not valid\. Did you mean 'adanorm'\?"),
        ({"name": "adabelief", "cautious": True}, r"optimizer\.cautious = True is not valid\. .*adanorm_r\.$"),
        ({"name": "adabound", "adam_debias": True}, r"optimizer\.adam_debias = True is not valid\. Expected an arg"),
        ({"name": "adamp", "adanorm": "yes"}, r"optimizer\.adanorm = 'yes' is not valid\. Expected true or false"),
    ],
)
def test_a_misspelt_or_unread_kwargs_switch_is_refused(optimizer, message):
    with pytest.raises(OptimConfigError, match=message):
        validate_optim_config({"optimizer": optimizer})
