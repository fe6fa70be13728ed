"""The optimizer and scheduler registries against what lists their names elsewhere: the config guide and the config
tree."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lightning_optim.optim.registry import EXTRA_OPTIMIZER_INFOS, OPTIMIZER_INFOS, OPTIMIZERS, optimizer_class
from lightning_optim.schedule.registry import SCHEDULERS

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "lightning_optim" / "conf"
REGISTRIES = {"optimizer": {**OPTIMIZER_INFOS, **EXTRA_OPTIMIZER_INFOS}, "scheduler": SCHEDULERS}
CONFIG_GUIDE = (ROOT / "docs" / "guides" / "config.md").read_text()
SCHEDULER_KEYS = {key for info in SCHEDULERS.values() for key in info.key_types()}
OPTIMIZER_KEYS = {"lr_scale"}
"""Config keys the optimizers paragraph names beside the optimizers."""


def supported_names(section: str) -> set[str]:
    """The backticked names in a section of the config guide, config keys (``warmup_steps``) left out."""
    text = CONFIG_GUIDE.split(f"\n### {section}", 1)[1].split("\n#", 1)[0]
    return set(re.findall(r"`([a-z][a-z0-9_]*)`", text)) - SCHEDULER_KEYS - OPTIMIZER_KEYS


def from_pytorch_optimizer(name: str) -> bool:
    """Whether ``name`` is one of pytorch-optimizer's own names (the ``pytorch-optimizer`` extra), not torch's."""
    return name not in OPTIMIZERS and optimizer_class({"name": name}).__module__.startswith("pytorch_optimizer.")


def test_the_config_guide_lists_exactly_the_registered_optimizers():
    names = supported_names("Optimizers")
    assert {name for name in names if not from_pytorch_optimizer(name)} == {*OPTIMIZER_INFOS, *EXTRA_OPTIMIZER_INFOS}


def test_the_config_guide_lists_exactly_the_registered_schedulers():
    assert supported_names("Schedules") == set(SCHEDULERS)


@pytest.mark.parametrize("family", REGISTRIES)
def test_every_registered_name_has_its_conf_file_and_every_file_is_registered(family):
    registry = REGISTRIES[family]
    assert all((CONF / info.conf_file).is_file() for info in registry.values())
    files = {f"{family}/{path.name}" for path in (CONF / family).glob("*.yaml")}
    # conf/scheduler/none.yaml is the constant lr: no scheduler at all.
    # The optimizer files torch has no name for are pytorch-optimizer's (its extra).
    stems = [path.stem for path in (CONF / "optimizer").glob("*.yaml")] if family == "optimizer" else []
    external = {f"optimizer/{stem}.yaml" for stem in stems if from_pytorch_optimizer(stem)}
    assert files - {"scheduler/none.yaml"} - external == {info.conf_file for info in registry.values()}
