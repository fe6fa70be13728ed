"""Several named optimizers (``optim_config.optimizers``) on a model shaped like Lightning's basic GAN example."""

from __future__ import annotations

import copy
import re
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_optim import OptimConfigError, OptimMixin, validate_optim_config
from lightning_optim.config.optimizer_sets import states_in_config_order
from lightning_optim.fit.run_length import ResumeConfigWarning
from tests.models import GAN, GAN_CONFIG, CrashAt, Interrupted, loader, trainer
from tests.references import warmup_cosine

BATCHES = 8
"""Batches per epoch of :func:`tests.models.loader`."""


def with_section(name: str, base: dict[str, Any] = GAN_CONFIG, **changes: Any) -> dict[str, Any]:
    """``base`` with keys of one optimizer's section replaced."""
    config = copy.deepcopy(base)
    config["optimizers"][name].update(changes)
    return config


SIXTEEN_STEPS = with_section(
    "generator", scheduler={**GAN_CONFIG["optimizers"]["generator"]["scheduler"], "total_steps": 16}
)
"""A config whose schedules need no trainer to be built."""


def generator_lr(step: int, total: int) -> float:
    return warmup_cosine(step, 0.02, 2, total, floor=0.1)


def discriminator_lrs(step: int) -> list[float]:
    """The discriminator's ``bias`` group (lr_scale 2) and ``default`` group under ``step`` (step_size 3, gamma 0.5)."""
    factor = 0.5 ** (step // 3)
    return [0.02 * factor, 0.01 * factor]


def test_the_optimizers_follow_the_config_order_and_select_their_parameters() -> None:
    model = GAN(SIXTEEN_STEPS)
    configured = model.configure_optimizers()
    generator, discriminator = (entry["optimizer"] for entry in configured)  # type: ignore[union-attr]
    assert model.optimizer_names == ("generator", "discriminator")
    assert [p for group in generator.param_groups for p in group["params"]] == list(model.generator.parameters())
    assert [group["name"] for group in discriminator.param_groups] == ["bias", "default"]
    assert [len(group["params"]) for group in discriminator.param_groups] == [2, 2]
    assert [entry["lr_scheduler"]["name"] for entry in configured] == ["lr-generator", "lr-discriminator"]  # type: ignore[index]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            {**GAN_CONFIG, "optimizer": {"name": "adam"}},
            "optim_config has both 'optimizers' and 'optimizer': use either one optimizer",
        ),
        (
            with_section("generator", params="^gen(erator"),
            "optim_config.optimizers.generator.params = '^gen(erator' is not valid. Expected a valid Python regex",
        ),
        (
            with_section("generator", params=None),
            "optim_config.optimizers.generator.params = None is not valid. Expected a regex selecting",
        ),
        (
            with_section("discriminator", shceduler={"name": "step"}),
            "optim_config.optimizers.discriminator.shceduler = {'name': 'step'} is not valid. Did you mean "
            "'scheduler'?",
        ),
        (
            with_section("generator", optimizer={"name": "adam", "lr": -1.0}),
            "optim_config.optimizers.generator.optimizer.lr = -1.0 is not valid.",
        ),
        (
            with_section("discriminator", scheduler={"name": "step", "step_size": 0}),
            "optim_config.optimizers.discriminator.scheduler: step_size = 0 is not valid; expected an int >= 1.",
        ),
        ({"optimizers": {}}, "optim_config.optimizers = {} is not valid. Expected a non-empty mapping"),
        (
            {"optimizers": {"gen/erator": GAN_CONFIG["optimizers"]["generator"]}},
            "optim_config.optimizers: the optimizer name 'gen/erator' is not valid. Expected letters, digits",
        ),
    ],
)
def test_a_bad_config_fails_at_assignment_naming_the_key(config: dict[str, Any], message: str) -> None:
    with pytest.raises(OptimConfigError, match=re.escape(message)):
        GAN(config)


def test_a_zero_lr_warns_naming_the_optimizer() -> None:
    config = with_section("discriminator", optimizer={"name": "adam", "lr": 0})
    with pytest.warns(UserWarning, match=re.escape("optim_config.optimizers.discriminator.optimizer.lr = 0:")):
        GAN(config)


def test_a_parameter_selected_twice_is_an_error_naming_it() -> None:
    model = GAN(with_section("discriminator", SIXTEEN_STEPS, params=r"^discriminator\.|\.0\.weight$"))
    with pytest.raises(OptimConfigError, match=re.escape("the parameter 'generator.0.weight' is selected by both")):
        model.configure_optimizers()


def test_a_trainable_parameter_selected_by_none_is_an_error_naming_it() -> None:
    model = GAN(with_section("discriminator", SIXTEEN_STEPS, params=r"^discriminator\.0\."))
    with pytest.raises(OptimConfigError, match=r"the trainable parameter\(s\) 'discriminator\.2\.weight', "):
        model.configure_optimizers()
    model.discriminator[2].requires_grad_(False)
    assert len(model.configure_optimizers()) == 2  # frozen parameters belong to no optimizer


def test_an_optimizer_selecting_nothing_is_an_error() -> None:
    config = copy.deepcopy(SIXTEEN_STEPS)
    config["optimizers"]["critic"] = {"params": "^critic", "optimizer": {"name": "sgd", "lr": 0.1}}
    with pytest.raises(OptimConfigError, match=re.escape("optim_config.optimizers.critic.params = '^critic'")):
        GAN(config).configure_optimizers()


def test_automatic_optimization_is_refused_by_lightning() -> None:
    model = GAN()
    model.automatic_optimization = True
    with pytest.raises(Exception, match="only supported with manual optimization"):
        trainer(max_epochs=1).fit(model, loader())


def test_each_optimizer_follows_its_schedule_exactly() -> None:
    model = GAN()
    trainer(max_epochs=2).fit(model, loader())
    total = 2 * BATCHES
    assert [record["lr_g"][0] for record in model.records] == pytest.approx(
        [generator_lr(k, total) for k in range(total)], rel=1e-12, abs=1e-15
    )
    assert [lr for record in model.records for lr in record["lr_d"]] == pytest.approx(
        [lr for k in range(total) for lr in discriminator_lrs(k)], rel=1e-12
    )


def test_a_resume_continues_both_schedules_exactly(tmp_path) -> None:
    uninterrupted = GAN()
    trainer(max_epochs=2).fit(uninterrupted, loader())

    first = GAN()
    # Manual optimization: trainer.global_step counts both optimizers' steps, two per batch.
    saving = ModelCheckpoint(dirpath=tmp_path, filename="{step}", every_n_train_steps=10)
    with pytest.raises(Interrupted):
        trainer(max_epochs=2, enable_checkpointing=True, callbacks=[saving, CrashAt(10)]).fit(first, loader())
    checkpoint = torch.load(tmp_path / "step=10.ckpt", weights_only=True)
    assert checkpoint["optim_config"]["optimizers"]["generator"]["params"] == r"^generator\."
    assert checkpoint["optim_run_lengths"] == [
        {"interval": "step", "length": 16, "optimizer": "generator"},
        {"interval": "step", "length": 16, "optimizer": "discriminator"},
    ]

    second = GAN()
    with pytest.warns(ResumeConfigWarning) as record:
        trainer(max_epochs=3).fit(second, loader(), ckpt_path=tmp_path / "step=10.ckpt")
    # Only the generator's length comes from the run; the discriminator's step decay has none.
    messages = [str(w.message) for w in record if w.category is ResumeConfigWarning]
    assert len(messages) == 1
    assert "optim_config.optimizers.generator.scheduler ('warmup_cosine') continues as it began, over 16" in messages[0]
    resumed = first.records + second.records
    assert len(first.records) == 5
    # The generator's cosine keeps the checkpoint's 16 steps although this run is 24 long.
    assert [r["lr_g"] for r in resumed[:16]] == [r["lr_g"] for r in uninterrupted.records]
    assert [r["lr_d"] for r in resumed[:16]] == [r["lr_d"] for r in uninterrupted.records]
    assert [r["lr_g"] for r in resumed[16:]] == [[0.02 * 0.1]] * 8


def test_a_resume_with_another_optimizer_is_refused(tmp_path) -> None:
    model = GAN()
    run = trainer(max_steps=2)
    run.fit(model, loader())
    run.save_checkpoint(tmp_path / "gan.ckpt")
    changed = GAN(with_section("discriminator", optimizer={"name": "sgd", "lr": 0.1}))
    with pytest.raises(OptimConfigError, match=re.escape("generator: 'adam', discriminator: 'adam' and optim_config")):
        trainer(max_steps=4).fit(changed, loader(), ckpt_path=tmp_path / "gan.ckpt")


def test_a_resume_with_a_changed_lr_names_the_key(tmp_path) -> None:
    model = GAN(SIXTEEN_STEPS)
    run = trainer(max_steps=2)
    run.fit(model, loader())
    run.save_checkpoint(tmp_path / "gan.ckpt")
    lr = {"name": "adam", "lr": 0.03, "betas": [0.5, 0.999]}
    changed = GAN(with_section("generator", SIXTEEN_STEPS, optimizer=lr))
    with pytest.warns(ResumeConfigWarning, match=re.escape("optimizers.generator.optimizer.lr (0.02 -> 0.03)")):
        trainer(max_steps=4).fit(changed, loader(), ckpt_path=tmp_path / "gan.ckpt")
    assert changed.hparams["optim_config"]["optimizers"]["generator"]["optimizer"]["lr"] == 0.03


def test_max_steps_counting_both_optimizers_warns_for_a_schedule_sized_by_the_run() -> None:
    model = GAN()
    with pytest.warns(UserWarning, match=re.escape("so the run has 4 training batches")) as record:
        trainer(max_steps=8).fit(model, loader())
    assert "optim_config.optimizers.generator.scheduler takes its length" in str(
        next(w.message for w in record if "max_steps=8" in str(w.message))
    )
    assert len(model.records) == 4


def test_frequency_is_not_applied_under_manual_optimization_and_says_so() -> None:
    config = with_section("discriminator", scheduler={"name": "step", "step_size": 3, "gamma": 0.5, "frequency": 2})
    model = GAN(config)
    with pytest.warns(UserWarning, match=re.escape("optim_config.optimizers.discriminator.scheduler.frequency = 2")):
        trainer(max_epochs=1).fit(model, loader())
    # Each sch.step() moves the schedule one step: the lr is the schedule's at that step, as without frequency.
    assert [record["lr_d"][1] for record in model.records] == pytest.approx(
        [discriminator_lrs(k)[1] for k in range(BATCHES)], rel=1e-12
    )


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"gradient_clip_val": -1.0}, ValueError, "clip_gradients(gradient_clip_val=-1.0) is not valid"),
        ({"gradient_clip_val": 1.0, "gradient_clip_algorithm": "nrom"}, Exception, "`gradient_clip_algorithm` nrom"),
    ],
)
def test_clip_gradients_refuses_a_bad_argument(arguments: dict[str, Any], error: type, message: str) -> None:
    class BadClip(GAN):
        def training_step(self, batch: Any, batch_idx: int) -> None:
            optimizer_g, _ = self.optimizers()  # type: ignore[misc]
            self.manual_backward(self(batch[0][:, :2]).sum())
            self.clip_gradients(optimizer_g, **arguments)

    with pytest.raises(error, match=re.escape(message)):
        trainer(max_epochs=1).fit(BadClip(), loader())


def test_clipping_folded_into_a_fused_step_under_manual_optimization_matches_the_unfolded_path() -> None:
    config = with_section("generator", optimizer={"name": "adam", "lr": 0.02, "betas": [0.5, 0.999], "fused": True})
    folded = GAN(config)
    trainer(max_epochs=1).fit(folded, loader())

    class Unfolded(GAN):
        fold_clipping = False

    unfolded = Unfolded(config)
    trainer(max_epochs=1).fit(unfolded, loader())
    assert folded.clip_state.last is not None and folded.clip_state.last.folded
    assert unfolded.clip_state.last is not None and not unfolded.clip_state.last.folded
    for mine, theirs in zip(folded.generator.parameters(), unfolded.generator.parameters(), strict=True):
        torch.testing.assert_close(mine, theirs)


def test_model_lr_names_the_optimizers_it_cannot_choose_between() -> None:
    model = GAN()
    with pytest.raises(OptimConfigError, match=re.escape("several optimizers (discriminator, generator)")):
        model.lr  # noqa: B018  # the property Lightning's lr finder reads
    with pytest.raises(OptimConfigError, match=re.escape("several optimizers (discriminator, generator)")):
        model.lr = 0.1
    assert model.optim_config["optimizers"]["generator"]["optimizer"]["lr"] == 0.02


@pytest.mark.parametrize("name", [".", "..", "..."])
def test_an_optimizer_name_that_is_no_name_is_refused(name: str) -> None:
    config = {"optimizers": {name: {"params": "^", "optimizer": {"name": "sgd"}}}}
    with pytest.raises(
        OptimConfigError,
        match=rf"^optim_config\.optimizers: the optimizer name {re.escape(repr(name))} is not valid\. Expected "
        r"letters, digits, '_', '-' and '\.', other than '\.' and '\.\.' \(the name is part of metric keys and log "
        r"folders\), e\.g\. 'generator'\.$",
    ):
        validate_optim_config(config)


def test_names_with_dots_inside_are_kept() -> None:
    config = {"optimizers": {"gen.v2": {"params": "^", "optimizer": {"name": "sgd"}}}}
    assert list(validate_optim_config(config)["optimizers"]) == ["gen.v2"]


TWO_SGDS: dict[str, Any] = {
    "optimizers": {
        "a": {
            "params": r"^first\.",
            "optimizer": {"name": "sgd", "lr": 1e-4, "momentum": 0.9},
            "scheduler": {"name": "step", "step_size": 3, "gamma": 0.5},
        },
        "b": {
            "params": r"^second\.",
            "optimizer": {"name": "sgd", "lr": 0.5, "momentum": 0.5},
            "scheduler": {"name": "warmup_constant", "warmup_steps": 4},
        },
    }
}
"""Two SGDs of the same shape whose states, swapped, would load without an error."""


def reversed_optimizers(config: dict[str, Any]) -> dict[str, Any]:
    return {"optimizers": dict(reversed(copy.deepcopy(config)["optimizers"].items()))}


class ByName(OptimMixin, L.LightningModule):
    """Two linear heads, each stepped by the optimizer its name picks (so the code does not depend on the order)."""

    def __init__(self, optim_config: dict[str, Any]) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.automatic_optimization = False
        self.first = torch.nn.Linear(4, 1)
        self.second = torch.nn.Linear(4, 1)
        self.optim_config = optim_config
        self.lrs: list[dict[str, float]] = []

    def training_step(self, batch: Any, batch_idx: int) -> None:
        inputs, targets = batch
        optimizers = dict(zip(self.optimizer_names, self.optimizers(), strict=True))  # type: ignore[arg-type]
        sections = self.optim_config["optimizers"]
        scheduled = [name for name in self.optimizer_names if sections[name].get("scheduler") is not None]
        found = self.lr_schedulers()
        schedulers = dict(zip(scheduled, found if isinstance(found, list) else [found], strict=True))
        self.lrs.append({name: optimizers[name].param_groups[0]["lr"] for name in ("a", "b")})
        for name, head in (("a", self.first), ("b", self.second)):
            optimizers[name].zero_grad()
            self.manual_backward(torch.nn.functional.mse_loss(head(inputs), targets))
            optimizers[name].step()
            if name in schedulers:
                schedulers[name].step()


def test_a_resume_with_the_optimizers_in_another_order_restores_each_by_name(tmp_path) -> None:
    uninterrupted = ByName(TWO_SGDS)
    trainer(max_epochs=2).fit(uninterrupted, loader())

    first = ByName(TWO_SGDS)
    # At the end of the first epoch (two optimizer steps a batch), so the resumed run sees the same batches.
    saving = ModelCheckpoint(dirpath=tmp_path, filename="{step}", every_n_train_steps=2 * BATCHES)
    with pytest.raises(Interrupted):
        trainer(max_epochs=2, enable_checkpointing=True, callbacks=[saving, CrashAt(2 * BATCHES)]).fit(first, loader())
    second = ByName(reversed_optimizers(TWO_SGDS))
    assert second.optimizer_names == ("b", "a")
    trainer(max_epochs=2).fit(second, loader(), ckpt_path=tmp_path / "step=16.ckpt")

    assert first.lrs + second.lrs == uninterrupted.lrs
    assert second.lrs[0] == {"a": 1e-4 * 0.5**2, "b": 0.5}
    for mine, theirs in zip(second.parameters(), uninterrupted.parameters(), strict=True):
        assert torch.equal(mine, theirs)


def test_a_resume_without_one_optimizers_scheduler_gives_the_other_its_own_state(tmp_path) -> None:
    uninterrupted = ByName(TWO_SGDS)
    trainer(max_epochs=2).fit(uninterrupted, loader())

    saving = ModelCheckpoint(dirpath=tmp_path, filename="{step}", every_n_train_steps=2 * BATCHES)
    with pytest.raises(Interrupted):
        trainer(max_epochs=2, enable_checkpointing=True, callbacks=[saving, CrashAt(2 * BATCHES)]).fit(
            ByName(TWO_SGDS), loader()
        )
    without_a = copy.deepcopy(TWO_SGDS)
    without_a["optimizers"]["a"]["scheduler"] = None
    second = ByName(without_a)
    with pytest.warns(ResumeConfigWarning, match="optimizers.a.scheduler"):
        trainer(max_epochs=2).fit(second, loader(), ckpt_path=tmp_path / "step=16.ckpt")

    # b's warmup ended before the checkpoint: it stays at its lr (with a's StepLR state it would decay by 0.5 per 3).
    half = len(uninterrupted.lrs) // 2
    assert [lrs["b"] for lrs in second.lrs] == [lrs["b"] for lrs in uninterrupted.lrs[half:]] == [0.5] * half


def scheduled(names: str) -> dict[str, Any]:
    """``TWO_SGDS``'s optimizers in the order of ``names``, only those in upper case with their scheduler."""
    sections = copy.deepcopy(TWO_SGDS)["optimizers"]
    return {
        "optimizers": {
            name.lower(): {
                **sections[name.lower()],
                "scheduler": sections[name.lower()]["scheduler"] if name.isupper() else None,
            }
            for name in names
        }
    }


@pytest.mark.parametrize(
    ("saved", "now", "optimizer_states", "lr_schedulers"),
    [
        ("AB", "Ab", None, ["a"]),
        ("AB", "aB", None, ["b"]),
        ("AB", "bA", ["b", "a"], ["a"]),
        ("Ab", "AB", None, ["a"]),
        ("aB", "BA", ["b", "a"], ["b"]),
        ("ab", "BA", ["b", "a"], []),
    ],
)
def test_states_in_config_order_gives_each_scheduler_state_to_its_optimizer(
    saved: str, now: str, optimizer_states: list[str] | None, lr_schedulers: list[str]
) -> None:
    saved_config = scheduled(saved)
    checkpoint = {
        "optim_config": saved_config,
        "optimizer_states": list(saved.lower()),
        "lr_schedulers": [name.lower() for name in saved if name.isupper()],
    }
    replaced = states_in_config_order(checkpoint, "optim_config", scheduled(now))
    assert replaced.get("optimizer_states") == optimizer_states
    assert replaced["lr_schedulers"] == lr_schedulers


def test_states_in_config_order_refuses_a_new_scheduler_before_a_saved_one() -> None:
    checkpoint = {"optim_config": scheduled("aB"), "optimizer_states": ["a", "b"], "lr_schedulers": ["b"]}
    message = (
        "optim_config.optimizers.a.scheduler: new since the checkpoint, it comes before b, whose saved scheduler state "
        "Lightning would give to it (it restores scheduler states by position). List the optimizers with a new "
        "scheduler after those that had one (those with a scheduler in the order b, a), or start a new run (load the "
        "weights with load_from_checkpoint)."
    )
    with pytest.raises(OptimConfigError, match=re.escape(message)):
        states_in_config_order(checkpoint, "optim_config", scheduled("AB"))


def test_states_in_config_order_maps_the_states_by_name() -> None:
    saved = copy.deepcopy(TWO_SGDS)
    saved["optimizers"]["c"] = {"params": "^third", "optimizer": {"name": "adam"}}
    config = {"optimizers": {name: saved["optimizers"][name] for name in ("c", "a", "b")}}
    checkpoint = {"optim_config": saved, "optimizer_states": ["a", "b", "c"], "lr_schedulers": ["a", "b"]}
    replaced = states_in_config_order(checkpoint, "optim_config", config)
    assert replaced == {"optimizer_states": ["c", "a", "b"], "lr_schedulers": ["a", "b"], "optim_config": config}
    assert list(replaced["optim_config"]["optimizers"]) == ["c", "a", "b"]
    assert checkpoint["optimizer_states"] == ["a", "b", "c"]
    assert states_in_config_order(checkpoint, "optim_config", saved) == {}


class SparseAndDense(OptimMixin, L.LightningModule):
    """A sparse ``Embedding`` under SparseAdam and a ``Linear`` under Adam, as two named optimizers."""

    CONFIG: dict[str, Any] = {
        "optimizers": {
            "embedding": {"params": r"^embedding\.", "optimizer": {"name": "sparse_adam", "lr": 0.1}},
            "head": {"params": r"^head\.", "optimizer": {"name": "adam", "lr": 0.01}},
        }
    }

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.automatic_optimization = False
        self.embedding = torch.nn.Embedding(10, 4, sparse=True)
        self.head = torch.nn.Linear(4, 1)
        self.optim_config = self.CONFIG

    def loss(self, batch: Any) -> torch.Tensor:
        tokens, targets = batch
        return torch.nn.functional.mse_loss(self.head(self.embedding(tokens)), targets)

    def training_step(self, batch: Any, batch_idx: int) -> None:
        optimizers = self.optimizers()
        for optimizer in optimizers:  # type: ignore[union-attr]
            optimizer.zero_grad()
        self.manual_backward(self.loss(batch))
        for optimizer in optimizers:  # type: ignore[union-attr]
            optimizer.step()


def test_sparse_adam_is_one_of_several_optimizers_checking_only_its_own_parameters() -> None:
    generator = torch.Generator().manual_seed(0)
    tokens, targets = torch.randint(0, 10, (32,), generator=generator), torch.randn(32, 1, generator=generator)
    batches = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(tokens, targets), batch_size=4)
    model = SparseAndDense()
    trainer(max_epochs=1).fit(model, batches)

    reference = SparseAndDense()
    sparse_adam = torch.optim.SparseAdam(reference.embedding.parameters(), lr=0.1)
    adam = torch.optim.Adam(reference.head.parameters(), lr=0.01)
    for batch in batches:
        sparse_adam.zero_grad()
        adam.zero_grad()
        reference.loss(batch).backward()
        sparse_adam.step()
        adam.step()
    for mine, theirs in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.equal(mine, theirs)


def test_sparse_adam_among_several_names_its_own_dense_parameters() -> None:
    model = SparseAndDense()
    model.optim_config = {
        "optimizers": {
            "embedding": {"params": r"^(embedding|head\.bias)", "optimizer": {"name": "sparse_adam"}},
            "head": {"params": r"^head\.weight", "optimizer": {"name": "adam"}},
        }
    }
    message = "optim_config.optimizers.embedding.optimizer.name = 'sparse_adam' is not valid. Expected an optimizer "
    with pytest.raises(OptimConfigError, match=re.escape(message) + r".*parameters \['head\.bias'\] get dense"):
        model.configure_optimizers()
