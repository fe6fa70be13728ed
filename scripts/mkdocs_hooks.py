"""MkDocs hooks: pages generated from the repository at build time, and Sphinx roles in docstrings made readable.

- ``examples.md`` is ``examples/README.md`` with its links made to work on the site (pictures from ``docs/images``,
  scripts named as code), so the page and the examples cannot drift apart.
- ``reference/conf.md`` gets one table per Hydra config group, read from ``lightning_optim/conf``: every file with
  its first comment line.
- ``<!-- api lightning_optim -->`` in a page becomes one mkdocstrings entry per name in that package's ``__all__``,
  at the module that defines it, so the reference lists every public name.
- Docstrings use Sphinx roles (``:class:`~lightning_optim.OptimMixin```); Markdown renders them as a role name
  before inline code, which the page shows as the code alone.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "lightning_optim" / "conf"
CONF_MARKER = "<!-- conf groups -->"
API_MARKER = re.compile(r"<!-- api (\S+) -->")
ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj):<code>(~?)([\w.]+)</code>")


def examples_page() -> str:
    """``examples/README.md`` with picture links into the site and script links as code."""
    text = (ROOT / "examples" / "README.md").read_text()
    text = text.replace("](../docs/images/", "](images/")
    return re.sub(r"\[`?([\w./-]+\.(?:py|yaml))`?\]\(([\w./-]+)\)", r"`examples/\2`", text)


def first_comment(path: Path) -> str:
    """The first comment line of a YAML file, without its ``#``."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
        if line.strip():
            break
    return ""


def conf_tables() -> str:
    """One section per config group: its files (the option to pass) and what each is."""
    sections = ["## Primary configs", "", "| file | what it is |", "|---|---|"]
    sections += [f"| `{path.name}` | {first_comment(path)} |" for path in sorted(CONF.glob("*.yaml"))]
    for group in sorted(path for path in CONF.iterdir() if path.is_dir() and not path.name.startswith("_")):
        files = sorted(group.rglob("*.yaml"))
        if not files:
            continue
        sections += ["", f"## `{group.name}`", "", "| option | what it is |", "|---|---|"]
        for path in files:
            option = path.relative_to(group).with_suffix("").as_posix()
            description = first_comment(path).replace("|", r"\|")
            sections.append(f"| `{group.name}={option}` | {description} |")
    return "\n".join(sections)


def api_entries(package_name: str) -> str:
    """One ``::: module.Name`` entry per name in the package's ``__all__``, at the module that defines it."""
    package = importlib.import_module(package_name)
    entries = []
    for name in sorted(package.__all__, key=str.lower):
        home = getattr(package, name)
        module = getattr(home, "__module__", None) or package_name
        if not isinstance(home, type) and not callable(home):
            module = next(m for m in _defining_modules(package_name, name))
        entries.append(f"::: {module}.{name}")
    return "\n\n".join(entries)


def _defining_modules(package_name: str, name: str) -> list[str]:
    """Modules of the package whose source assigns ``name`` at the top level (constants have no ``__module__``)."""
    package = importlib.import_module(package_name)
    found = []
    for path in sorted(Path(package.__file__).parent.rglob("*.py")):
        if re.search(rf"^{re.escape(name)}\b[^=]*=", path.read_text(), flags=re.MULTILINE):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return found


def on_files(files: Files, config: Any) -> Files:
    files.append(File.generated(config, "examples.md", content=examples_page()))
    return files


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    markdown = markdown.replace(CONF_MARKER, conf_tables()) if CONF_MARKER in markdown else markdown
    return API_MARKER.sub(lambda m: api_entries(m.group(1)), markdown)


def on_page_content(html: str, **_: Any) -> str:
    return ROLE.sub(lambda m: f"<code>{m.group(2).rsplit('.', 1)[-1] if m.group(1) else m.group(2)}</code>", html)
