"""A ``_target_`` imports only from allowed modules: a config or a checkpoint naming ``venv.__main__`` (which builds a
virtualenv when imported), ``this`` or ``unittest.__main__`` imports nothing, whatever the entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from lightning_optim import OptimConfigError, allow_target_modules
from lightning_optim import targets as targets_module
from lightning_optim.targets import DEFAULT_TARGET_MODULES, allowed_target_modules, import_class
from tests.cli.apps import REPO
from tests.models import MixinModel, loader, trainer


class OwnOptimizer(torch.optim.SGD):
    """A user's optimizer, in a module that is not allowed until the user says so."""


RUNS_CODE_AT_IMPORT = ["venv.__main__.EnvBuilder", "this.X", "unittest.__main__.X", "torch.optim.__main__.X"]


@pytest.fixture
def allowed(monkeypatch):
    """The allow-list as it starts; whatever a test allows is forgotten after it."""
    monkeypatch.setattr(targets_module, "_allowed", list(DEFAULT_TARGET_MODULES))


def refusals_in_a_fresh_process(script: str) -> dict:
    """Run ``script`` (which prints one JSON object) in a new interpreter: today's code would import the modules,
    which run code (``venv.__main__`` exits the process), so the test process is never exposed to them."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_target_whose_module_runs_code_is_refused_before_import_from_config_mixin_and_checkpoint(tmp_path):
    model = MixinModel({"optimizer": {"name": "sgd", "lr": 0.1}})
    trainer(max_steps=1, default_root_dir=tmp_path).fit(model, loader(samples=4))
    clean = tmp_path / "clean.ckpt"
    model.trainer.save_checkpoint(clean)
    for index, target in enumerate(RUNS_CODE_AT_IMPORT):
        checkpoint = torch.load(clean, weights_only=True)
        checkpoint["hyper_parameters"]["optim_config"]["optimizer"] = {"_target_": target, "lr": 0.1}
        checkpoint["optim_config"] = checkpoint["hyper_parameters"]["optim_config"]
        torch.save(checkpoint, tmp_path / f"edited-{index}.ckpt")

    found = refusals_in_a_fresh_process(
        f"""
        import json, sys
        from lightning_optim import OptimConfigError, validate_optim_config
        from tests.models import MixinModel
        targets = {RUNS_CODE_AT_IMPORT!r}
        errors = {{}}
        for index, target in enumerate(targets):
            attempts = {{
                "optimizer": lambda: validate_optim_config({{"optimizer": {{"_target_": target}}}}),
                "scheduler": lambda: validate_optim_config(
                    {{"optimizer": {{"name": "sgd", "lr": 0.1}}, "scheduler": {{"_target_": target}}}}
                ),
                "mixin": lambda: MixinModel({{"optimizer": {{"_target_": target, "lr": 0.1}}}}),
                "checkpoint": lambda: MixinModel.load_from_checkpoint(
                    {str(tmp_path)!r} + f"/edited-{{index}}.ckpt", weights_only=True
                ),
            }}
            for entry, attempt in attempts.items():
                try:
                    attempt()
                    errors[f"{{entry}} {{target}}"] = "accepted"
                except OptimConfigError as error:
                    errors[f"{{entry}} {{target}}"] = str(error)
        imported = sorted(m for m in sys.modules if m.endswith("__main__") and m != "__main__" or m == "this")
        print(json.dumps({{"errors": errors, "imported": imported}}))
        """
    )
    assert found["imported"] == []
    for target in RUNS_CODE_AT_IMPORT:
        module = target.rpartition(".")[0]
        for entry in ("optimizer", "scheduler", "mixin", "checkpoint"):
            message = found["errors"][f"{entry} {target}"]
            key = "scheduler._target_" if entry == "scheduler" else "optimizer._target_"
            assert message.startswith(f"optim_config.{key} = {target!r} is not valid."), message
            assert f"module {module!r} was not imported" in message
            assert "is never imported from a config (importing it runs code), whatever the allow-list holds" in message


def test_a_module_outside_the_allow_list_is_not_imported_and_the_error_says_how_to_allow_it(allowed):
    assert "tests.test_targets_unused" not in sys.modules
    with pytest.raises(OptimConfigError) as raised:
        import_class("tests.test_targets_unused.Thing", torch.optim.Optimizer, "optimizer._target_")
    assert str(raised.value) == (
        "optim_config.optimizer._target_ = 'tests.test_targets_unused.Thing' is not valid. Expected a dotted path to a "
        "torch.optim.optimizer.Optimizer subclass, e.g. 'torch.optim.AdamW'; module 'tests.test_targets_unused' was "
        "not imported: a _target_ may only name classes in torch.optim, schedulefree, pytorch_optimizer, "
        "lightning_optim (and their submodules), because importing a module runs its code. If you trust "
        "'tests.test_targets_unused', allow it with lightning_optim.allow_target_modules('tests.test_targets_unused') "
        "in code, or allowed_target_modules=[tests.test_targets_unused] on the command line of the lightning-optim "
        "apps."
    )
    assert "tests.test_targets_unused" not in sys.modules


@pytest.mark.parametrize("target", ["torch.optimX.SGD", "torch.SGD", "torch.nn.Linear", "lightning_optim2.X"])
def test_an_allowed_prefix_matches_whole_module_names_only(target, allowed):
    with pytest.raises(OptimConfigError, match=r"was not imported: a _target_ may only name classes in torch\.optim,"):
        import_class(target, torch.optim.Optimizer, "optimizer._target_")


def test_a_users_own_module_is_allowed_in_code_with_its_submodules_and_nothing_beside_it(allowed):
    target = f"{__name__}.OwnOptimizer"
    with pytest.raises(OptimConfigError, match="allow_target_modules"):
        import_class(target, torch.optim.Optimizer, "optimizer._target_")
    allow_target_modules("tests.test_target")  # a prefix of the module's name, not a parent: still refused
    with pytest.raises(OptimConfigError, match="allow_target_modules"):
        import_class(target, torch.optim.Optimizer, "optimizer._target_")
    allow_target_modules("tests")
    assert import_class(target, torch.optim.Optimizer, "optimizer._target_") is OwnOptimizer
    assert allowed_target_modules() == (*DEFAULT_TARGET_MODULES, "tests.test_target", "tests")
    model = MixinModel({"optimizer": {"_target_": target, "lr": 0.25}})
    assert model.configure_optimizers().param_groups[0]["lr"] == 0.25


@pytest.mark.parametrize("module", ["venv.__main__", "__main__", "this", "mypkg.this", "my pkg", "", "a..b", 3])
def test_allowing_a_module_that_runs_code_at_import_or_no_module_name_is_refused(module, allowed):
    with pytest.raises(ValueError, match=r"allow_target_modules\(.*\) is not valid\. Expected a dotted module name"):
        allow_target_modules(module)
    assert allowed_target_modules() == DEFAULT_TARGET_MODULES


def test_the_default_list_holds_torch_the_optional_optimizer_packages_and_the_package():
    assert DEFAULT_TARGET_MODULES == ("torch.optim", "schedulefree", "pytorch_optimizer", "lightning_optim")
    scheduler = import_class("torch.optim.lr_scheduler.StepLR", torch.optim.lr_scheduler.LRScheduler, "s._target_")
    assert scheduler is torch.optim.lr_scheduler.StepLR
