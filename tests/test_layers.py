"""The package's layers: which package may import which, no import cycles, and the pure layers free of Lightning.

The layers, from the bottom: the leaves at the top level (``errors``, ``names``, ``targets``, ``value_types``,
``internals``); the sections of ``optim_config`` (``optim``, ``schedule``, ``clipping``) and ``stats``; ``config``;
``fit``; ``callbacks``; ``demos``; ``cli``. Imports run downwards only (``clipping`` may use ``stats``).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import lightning_optim

PACKAGE = Path(lightning_optim.__file__).parent
LEAVES = {"errors", "names", "targets", "value_types", "internals"}
MAY_IMPORT = {
    "leaves": set(),
    "optim": {"leaves"},
    "stats": {"leaves"},
    "schedule": {"leaves"},
    "clipping": {"leaves", "stats"},
    "config": {"leaves", "optim", "schedule", "clipping", "stats"},
    "fit": {"leaves", "optim", "schedule", "clipping", "stats", "config"},
    "callbacks": {"leaves", "optim", "schedule", "clipping", "stats", "config", "fit"},
    "demos": {"leaves", "optim", "schedule", "clipping", "stats", "config", "fit", "callbacks"},
    "cli": {"leaves", "optim", "schedule", "clipping", "stats", "config", "fit", "callbacks", "demos"},
}
PURE = ("optim", "schedule", "clipping", "stats", "config")
"""Packages that never import Lightning (``config`` is checked before any model or trainer exists)."""


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str | None:
    parts = module.split(".")
    if len(parts) == 1:
        return None
    return "leaves" if parts[1] in LEAVES else parts[1]


def imports_of(path: Path) -> set[str]:
    """Every ``lightning_optim`` module the file imports, at module level or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.split(".")[0] == "lightning_optim" and name != "lightning_optim"}


def import_graph() -> dict[str, set[str]]:
    return {module_name(path): imports_of(path) for path in PACKAGE.rglob("*.py")}


def test_the_top_level_holds_only_the_leaves():
    top = sorted(path.stem for path in PACKAGE.glob("*.py"))
    assert top == sorted({"__init__", *LEAVES})


def test_imports_run_downwards_only():
    wrong = [
        f"{module} -> {imported}"
        for module, imported_modules in import_graph().items()
        if (own := layer(module)) is not None
        for imported in imported_modules
        if (other := layer(imported)) != own and other not in MAY_IMPORT[own]
    ]
    assert wrong == []


def test_there_are_no_import_cycles():
    graph = import_graph()
    state: dict[str, str] = {}
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for imported in sorted(graph.get(module, ())):
            if state.get(imported) == "open":
                cycles.append([*path[path.index(imported) :], imported])
            elif imported not in state:
                visit(imported, [*path, imported])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_the_pure_layers_import_neither_lightning_nor_omegaconf_below_config():
    modules = sorted(
        module_name(path) for path in PACKAGE.rglob("*.py") if layer(module_name(path)) in {*PURE, "leaves"}
    )
    script = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted(m for m in ('lightning', 'pytorch_lightning', 'omegaconf') if m in sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    loaded = json.loads(result.stdout)
    assert loaded == ["omegaconf"]  # config's typed form reads DictConfig; nothing pure loads Lightning
    assert len(modules) >= 25
