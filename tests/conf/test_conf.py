"""The Hydra config tree: torch's defaults in the optimizer files, and every group file composes."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir, initialize_config_module
from omegaconf import OmegaConf

from lightning_optim import OPTIMIZERS, SCHEDULER_NAMES, OptimConfigError, build_optimizer, validate_optim_config
from lightning_optim.cli.common import compose_optim_config
from lightning_optim.optim.registry import EXTRA_OPTIMIZER_INFOS, optimizer_class

PACKAGE_CONF = Path(__file__).resolve().parents[2] / "lightning_optim" / "conf"
TOP_LEVEL_CONF = Path(__file__).resolve().parents[2] / "conf"

DELIBERATE_CHANGES = {
    "sgd": {"lr": 0.1, "momentum": 0.9, "nesterov": True},
    "muon": {"lr": 0.02, "aux": {"name": "adamw"}},
}
"""Optimizer keys whose yaml value is not torch's default, on purpose (the main job's Nesterov SGD; Keller Jordan's
Muon lr, and Muon's auxiliary optimizer written out)."""

GROUPS = ["optimizer", "scheduler", "model", "data", "trainer", "callbacks", "logger", "experiment", "debug"]

NEWER_TORCH = {"muon": ("Muon", "2.9")}
"""Optimizer files whose class is newer than the package's torch floor: name -> (torch.optim class, torch version)."""
MISSING_FROM_TORCH = {name for name, (cls, _) in NEWER_TORCH.items() if not hasattr(torch.optim, cls)}
EXPERIMENT_OPTIMIZERS = {"transformer_muon": "muon"}
"""Experiment files whose optimizer is in :data:`NEWER_TORCH`: experiment -> optimizer."""


def group_options(group: str) -> list[str]:
    return sorted(path.stem for path in (PACKAGE_CONF / group).glob("*.yaml"))


def torch_defaults(cls: type) -> dict:
    parameters = inspect.signature(cls.__init__).parameters
    return {key: p.default for key, p in parameters.items() if key not in ("self", "params")}


def as_torch_value(value):
    return tuple(value) if isinstance(value, list) else value


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_optimizer_file_writes_out_torchs_defaults(name):
    values = OmegaConf.to_container(OmegaConf.load(PACKAGE_CONF / "optimizer" / f"{name}.yaml"))
    assert values.pop("name") == name
    defaults = torch_defaults(OPTIMIZERS[name])
    assert list(values) == list(defaults), "every constructor argument written out, in signature order"
    expected = {**defaults, **DELIBERATE_CHANGES.get(name, {})}
    for key, value in values.items():
        assert as_torch_value(value) == expected[key], f"{name}.{key}"
        assert type(as_torch_value(value)) is type(expected[key]) or expected[key] is None, f"{name}.{key} type"


def test_deliberate_changes_differ_from_torch():
    for name, changes in DELIBERATE_CHANGES.items():
        defaults = torch_defaults(OPTIMIZERS[name])
        assert all(defaults[key] != value for key, value in changes.items())


def test_every_optimizer_and_scheduler_name_has_a_file():
    files = [name for name in group_options("optimizer") if name not in MISSING_FROM_TORCH]
    registered = [*OPTIMIZERS, *EXTRA_OPTIMIZER_INFOS]
    assert [name for name in files if name in registered] == sorted(registered)
    # The other files are pytorch-optimizer's (tests/test_external_optimizers.py checks their values).
    external = [name for name in files if name not in registered]
    assert all(optimizer_class({"name": name}).__module__.startswith("pytorch_optimizer.") for name in external)
    assert group_options("scheduler") == sorted([*SCHEDULER_NAMES, "none"])


def test_main_job_defaults():
    with initialize_config_module(version_base="1.3", config_module="lightning_optim.conf"):
        cfg = compose(config_name="train")
    assert cfg.optimizer.name == "sgd" and cfg.optimizer.momentum == 0.9 and cfg.optimizer.nesterov is True
    assert cfg.scheduler.name == "warmup_cosine" and cfg.scheduler.total_steps is None
    assert cfg.model._target_ == "lightning_optim.demos.DigitsCNN"
    assert cfg.trainer.gradient_clip_val == 1.0 and cfg.trainer.accelerator == "cpu"
    assert cfg.param_groups == [] and cfg.metric == "val/acc"
    assert cfg.callbacks.lr_monitor.logging_interval == "step" and cfg.callbacks.model_checkpoint.save_last


def _compose_everywhere(overrides: list[str], config_name: str = "train"):
    with initialize_config_module(version_base="1.3", config_module="lightning_optim.conf"):
        from_package = compose(config_name=config_name, overrides=overrides)
    with initialize_config_dir(version_base="1.3", config_dir=str(TOP_LEVEL_CONF)):
        from_checkout = compose(config_name=config_name, overrides=overrides)
    assert from_package == from_checkout
    return from_package


def group_file(group: str, option: str):
    """``(group, option)``, skipped where the option's optimizer is newer than the installed torch."""
    optimizer = EXPERIMENT_OPTIMIZERS.get(option) if group == "experiment" else option if group == "optimizer" else None
    if optimizer in MISSING_FROM_TORCH:
        cls, version = NEWER_TORCH[optimizer]
        return pytest.param(group, option, marks=pytest.mark.skip(reason=f"torch.optim.{cls} needs torch>={version}"))
    return (group, option)


@pytest.mark.slow
@pytest.mark.parametrize("group,option", [group_file(g, o) for g in GROUPS for o in group_options(g)])
def test_every_group_file_composes(group, option):
    cfg = _compose_everywhere([f"{group}={option}"])
    optim_config = compose_optim_config(cfg)
    if group == "optimizer":
        assert cfg.optimizer.name == option
    if group == "scheduler":
        assert optim_config["scheduler"] is None if option == "none" else cfg.scheduler.name == option
    assert validate_optim_config(optim_config)["optimizer"]["name"] == cfg.optimizer.name


def test_top_level_conf_is_the_package_conf():
    assert TOP_LEVEL_CONF.is_symlink() and TOP_LEVEL_CONF.resolve() == PACKAGE_CONF


def test_debug_tiny_shrinks_any_run_experiments_included():
    cfg = _compose_everywhere(["experiment=transformer", "debug=tiny"])
    trainer = {key: cfg.trainer[key] for key in ("max_epochs", "limit_train_batches", "limit_val_batches")}
    assert trainer == {"max_epochs": 1, "limit_train_batches": 3, "limit_val_batches": 2}
    assert cfg.trainer.log_every_n_steps == 1
    assert not cfg.trainer.enable_progress_bar and not cfg.trainer.enable_model_summary


def test_schedule_config_extends_train():
    cfg = _compose_everywhere(["scheduler=onecycle", "out=x.png"], config_name="schedule")
    assert cfg.out == "x.png" and cfg.scheduler.name == "onecycle" and cfg.optimizer.name == "sgd"


@pytest.mark.parametrize(
    "experiment,model,optimizer,scheduler",
    [
        ("cnn", "DigitsCNN", "sgd", "cosine"),
        ("rnn", "SequenceLSTM", "adam", "step"),
        ("transformer", "SequenceTransformer", "adamw", "warmup_cosine"),
    ],
)
def test_experiments_compose(experiment, model, optimizer, scheduler):
    cfg = _compose_everywhere([f"experiment={experiment}"])
    assert cfg.model._target_.endswith(model)
    assert (cfg.optimizer.name, cfg.scheduler.name) == (optimizer, scheduler)
    assert cfg.trainer.gradient_clip_val == 1.0
    if experiment == "transformer":
        assert list(cfg.optimizer.betas) == [0.9, 0.98] and cfg.model.max_len == cfg.data.seq_len
    if experiment == "cnn":
        assert cfg.optimizer.nesterov and cfg.optimizer.momentum == 0.9
    validate_optim_config(compose_optim_config(cfg))


@pytest.mark.skipif("muon" in MISSING_FROM_TORCH, reason="torch.optim.Muon needs torch>=2.9")
def test_transformer_muon_experiment_is_the_transformer_recipe_with_muon():
    from hydra.utils import instantiate

    cfg = _compose_everywhere(["experiment=transformer_muon"])
    transformer = _compose_everywhere(["experiment=transformer"])
    assert cfg.model == transformer.model and cfg.data == transformer.data and cfg.trainer == transformer.trainer
    assert cfg.scheduler == transformer.scheduler
    optim_config = validate_optim_config(compose_optim_config(cfg))
    optimizer = optim_config["optimizer"]
    assert (optimizer["name"], optimizer["lr"], optimizer["adjust_lr_fn"]) == ("muon", 1e-2, "match_rms_adamw")
    assert optimizer["weight_decay"] == 0.01
    assert optimizer["aux"] == {"name": "adamw", "betas": [0.9, 0.98], "weight_decay": 0.01}
    assert [(rule["name"], rule["muon"]) for rule in optim_config["param_groups"]] == [
        ("no_decay", False),
        ("input", False),
    ]
    model = instantiate(cfg.model, optim_config=optim_config, _convert_="all")
    built = build_optimizer(model, optim_config["optimizer"], optim_config["param_groups"])
    names = {id(p): n for n, p in model.named_parameters()}
    groups = {
        g["name"]: (g["use_muon"], g["lr"], sorted(names[id(p)] for p in g["params"])) for g in built.param_groups
    }
    assert {name: group[:2] for name, group in groups.items()} == {
        "no_decay": (False, 1e-2),
        "input": (False, 1e-2),
        "muon": (True, 1e-2),
        "aux": (False, 1e-2),
    }
    assert "position" in groups["no_decay"][2] and groups["input"][2] == ["embed.weight"]
    assert groups["aux"][2] == ["head.weight"]
    assert all(name.startswith("encoder.layers.") and name.endswith("weight") for name in groups["muon"][2])
    assert len(groups["muon"][2]) == 8


@pytest.mark.parametrize("experiment", ["cnn", "transformer"])
def test_experiment_param_groups_match_the_intended_parameters(experiment):
    from hydra.utils import instantiate

    cfg = _compose_everywhere([f"experiment={experiment}"])
    optim_config = compose_optim_config(cfg)
    model = instantiate(cfg.model, optim_config=optim_config, _convert_="all")
    optimizer = build_optimizer(model, optim_config["optimizer"], optim_config["param_groups"])
    names = {id(p): n for n, p in model.named_parameters()}
    groups = {g["name"]: sorted(names[id(p)] for p in g["params"]) for g in optimizer.param_groups}
    assert all(
        n.endswith("bias") or "norm" in n or n == "position" or ".1." in n or ".4." in n for n in groups["no_decay"]
    )
    assert all(n.endswith("weight") for n in groups["default"])
    assert {g["name"]: g["weight_decay"] for g in optimizer.param_groups}["no_decay"] == 0.0
    assert len(groups["no_decay"]) > 0 and len(groups["default"]) > 0


def _validate_overrides(overrides: list[str]) -> dict:
    with initialize_config_module(version_base="1.3", config_module="lightning_optim.conf"):
        return validate_optim_config(compose_optim_config(compose(config_name="train", overrides=overrides)))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["optimizer.lr=nan"], r"optimizer\.lr = nan is not valid\. Expected a finite number\."),
        (["optimizer=adam", "optimizer.betas=[0.9,inf]"], r"optimizer\.betas\[1\] = inf is not valid"),
        (
            ["optimizer=adam", "optimizer.betas=0.9"],
            r"optimizer\.betas = 0\.9 is not valid\. Expected a pair of numbers",
        ),
        (
            ["~scheduler.warmup_ratio", "+scheduler.warmup_steps=abc"],
            r"scheduler\.warmup_steps = 'abc' is not valid\. Expected an integer, e\.g\. 0\.",
        ),
        (
            ["scheduler.warmup_ratio=2.0"],
            r"scheduler\.warmup_ratio = 2\.0 is not valid\. Expected a fraction of the run",
        ),
    ],
)
def test_command_line_values_are_checked_as_hydra_parses_them(overrides, message):
    with pytest.raises(OptimConfigError, match=r"^optim_config\." + message):
        _validate_overrides(overrides)


def test_an_integral_float_from_the_command_line_becomes_an_int():
    overrides = ["scheduler.total_steps=1e9", "~scheduler.warmup_ratio", "+scheduler.warmup_steps=1e3"]
    scheduler = _validate_overrides(overrides)["scheduler"]
    assert (scheduler["total_steps"], scheduler["warmup_steps"]) == (10**9, 1000)
    assert type(scheduler["total_steps"]) is int and type(scheduler["warmup_steps"]) is int
