"""The config tree ships inside the wheel, so ``pkg://lightning_optim.conf`` works from an install."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_contains_the_configs(tmp_path):
    # Built from a copy: setuptools writes build/ and *.egg-info next to the sources.
    source = tmp_path / "src"
    shutil.copytree(
        ROOT,
        source,
        symlinks=True,
        ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "outputs", "multirun", "__pycache__"),
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", str(source), "-w", str(tmp_path)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("lightning_optim-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {
        "lightning_optim/conf/train.yaml",
        "lightning_optim/conf/optimizer/sgd.yaml",
        "lightning_optim/conf/__init__.py",
        "lightning_optim/conf/experiment/transformer.yaml",
    } <= names
    shipped = {name for name in names if name.startswith("lightning_optim/conf/") and name.endswith(".yaml")}
    in_tree = {str(path.relative_to(ROOT)) for path in (ROOT / "lightning_optim" / "conf").rglob("*.yaml")}
    assert shipped == in_tree
