"""The documentation site builds with ``mkdocs build --strict`` (a broken link or docstring reference fails), and
its generated pages list every public name, every Hydra config option and every example picture."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import lightning_optim
import lightning_optim.callbacks

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "lightning_optim" / "conf"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    mkdocs = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)]
    result = subprocess.run(
        mkdocs, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def anchors(page: Path) -> set[str]:
    return set(re.findall(r'id="([^"]+)"', page.read_text()))


@pytest.mark.parametrize(("package", "page"), [(lightning_optim, "api"), (lightning_optim.callbacks, "callbacks")])
def test_the_reference_documents_every_public_name(site, package, page):
    documented = {anchor.rsplit(".", 1)[-1] for anchor in anchors(site / "reference" / page / "index.html")}
    assert sorted(set(package.__all__) - documented) == []


def test_the_conf_reference_lists_every_option(site):
    text = (site / "reference" / "conf" / "index.html").read_text()
    in_groups = [path.relative_to(CONF) for path in CONF.rglob("*.yaml") if path.parent != CONF]
    options = {f"{path.parts[0]}={Path(*path.parts[1:]).with_suffix('').as_posix()}" for path in in_groups}
    assert len(options) > 60
    assert sorted(option for option in options if f"<code>{option}</code>" not in text) == []


def test_the_examples_page_shows_every_picture_the_examples_readme_names(site):
    readme = (ROOT / "examples" / "README.md").read_text()
    pictures = re.findall(r"\(\.\./docs/images/([\w.-]+\.png)\)", readme)
    page = (site / "examples" / "index.html").read_text()
    assert len(pictures) >= 11
    assert [name for name in pictures if f'src="../images/{name}"' not in page] == []
    assert all((site / "images" / name).is_file() for name in pictures)
