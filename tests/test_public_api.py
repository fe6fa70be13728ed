"""``__all__`` of every public module: what it lists exists, and the package's lazy names come from it."""

import importlib
import pkgutil

import pytest

import lightning_optim


def public_modules() -> list[str]:
    """Every module of the package whose name has no leading underscore (the Hydra apps and conf excepted)."""
    names = [info.name for info in pkgutil.walk_packages(lightning_optim.__path__, "lightning_optim.")]
    return [
        name
        for name in names
        if not any(part.startswith("_") for part in name.split("."))
        and not name.startswith(("lightning_optim.conf", "lightning_optim.cli.train", "lightning_optim.cli.common"))
        and name != "lightning_optim.cli"
    ]


@pytest.mark.parametrize("name", public_modules())
def test_all_lists_what_the_module_defines(name):
    module = importlib.import_module(name)
    assert [attribute for attribute in module.__all__ if not hasattr(module, attribute)] == []


def test_the_packages_lazy_names_are_public_in_their_home_modules():
    for name, home in lightning_optim._HOMES.items():
        assert name in importlib.import_module(f"lightning_optim.{home}").__all__, name
    assert sorted(lightning_optim._HOMES) == sorted(lightning_optim.__all__)
