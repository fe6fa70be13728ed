"""Test tiers, assigned from what a test does, and quieter Lightning hints.

``make test-fast`` runs ``-m "not slow and not subprocess and not ddp"``; ``make test`` runs everything. A test is

- ``subprocess`` when it, a fixture it uses or a test-suite function they call names ``run_app``,
  ``run_app_expecting_failure`` or the ``subprocess`` module;
- ``ddp`` when it runs several Trainer processes: an app started with ``trainer=ddp`` or ``trainer=fsdp2``, a Trainer
  given a ``ddp*`` strategy, or any test under ``tests/sharded/`` (``ModelParallelStrategy`` runs, 2 processes);
- ``slow`` when it lives under ``tests/examples/`` (each example trains several models), or, marked by hand, when it
  takes over ``SLOW_SECONDS``, its parametrized cases together. Every run lists the tests in no tier that took
  longer, so a new slow test is noticed.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import CodeType
from typing import Any

import pytest

SLOW_SECONDS = 3.0
"""A test function (its parametrized cases together) that takes longer than this on two cores is slow."""

SLOW_DIRECTORIES = ("examples",)
"""Directories under ``tests/`` whose every test is slow."""

MULTIPROCESS_DIRECTORIES = ("sharded",)
"""Directories under ``tests/`` whose every test runs several Trainer processes."""

MULTIPROCESS_APPS = ("trainer=ddp", "trainer=fsdp2")
"""App overrides that run several Trainer processes."""

SUBPROCESS_CALLS = {"run_app", "run_app_expecting_failure", "subprocess"}
"""Names whose use starts another Python process."""

TESTS = Path(__file__).parent


def _reachable_code(functions: list[Any]) -> Iterator[tuple[CodeType, dict[str, Any]]]:
    """The code of ``functions``, of their nested functions and of every test-suite function they name."""
    stack = [(function.__code__, function.__globals__) for function in functions if inspect.isfunction(function)]
    seen: set[CodeType] = set()
    while stack:
        code, namespace = stack.pop()
        if code in seen:
            continue
        seen.add(code)
        yield code, namespace
        stack.extend((const, namespace) for const in code.co_consts if isinstance(const, CodeType))
        for name in code.co_names:
            value = namespace.get(name)
            if inspect.isfunction(value) and value.__module__.split(".")[0] == "tests":
                stack.append((value.__code__, value.__globals__))


def _strings(code: CodeType, namespace: dict[str, Any]) -> Iterator[str]:
    """String constants of ``code``, keyword names included, and the strings of the module constants it names."""
    for const in code.co_consts:
        if isinstance(const, str):
            yield const
        elif isinstance(const, tuple):
            yield from (item for item in const if isinstance(item, str))
    for name in code.co_names:
        value = namespace.get(name)
        if isinstance(value, (list, tuple)):
            yield from (item for item in value if isinstance(item, str))


def _tiers(item: pytest.Function) -> set[str]:
    """The tiers of test ``item``, read from its code and the code of the fixtures it uses."""
    fixtures = [fixture.func for fixtures in item._fixtureinfo.name2fixturedefs.values() for fixture in fixtures]
    starts_processes = ddp_strategy = ddp_app = False
    for code, namespace in _reachable_code([item.function, *fixtures]):
        starts_processes |= not SUBPROCESS_CALLS.isdisjoint(code.co_names)
        strings = set(_strings(code, namespace))
        ddp_strategy |= "strategy" in strings and any(string.startswith("ddp") for string in strings)
        ddp_app |= not strings.isdisjoint(MULTIPROCESS_APPS)
    tiers = {"subprocess"} if starts_processes else set()
    directory = item.path.relative_to(TESTS).parts[0]
    if ddp_strategy or (starts_processes and ddp_app) or directory in MULTIPROCESS_DIRECTORIES:
        tiers.add("ddp")
    if directory in SLOW_DIRECTORIES:
        tiers.add("slow")
    return tiers


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if isinstance(item, pytest.Function) and item.path.is_relative_to(TESTS):
            for tier in sorted(_tiers(item)):
                item.add_marker(tier)


TIERS = {"slow", "subprocess", "ddp"}
_untiered_seconds: dict[str, float] = {}
"""Seconds per test function in no tier, its parametrized cases together (setup and teardown included)."""


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if TIERS.isdisjoint(report.keywords):
        function = report.nodeid.split("[")[0]
        _untiered_seconds[function] = _untiered_seconds.get(function, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter: Any) -> None:
    slow = {function: seconds for function, seconds in _untiered_seconds.items() if seconds > SLOW_SECONDS}
    if slow:
        terminalreporter.write_sep("-", f"over {SLOW_SECONDS:g} s and in no tier: mark them @pytest.mark.slow")
        for function, seconds in sorted(slow.items(), key=lambda entry: -entry[1]):
            terminalreporter.write_line(f"{seconds:6.1f} s  {function}")


@pytest.fixture(autouse=True)
def _quiet_lightning_hints():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
        yield


@pytest.fixture(autouse=True)
def _lightning_records_reach_caplog(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Lightning's INFO records reach pytest's ``caplog``, whatever ran before in this worker.

    Lightning stops its loggers' records at a console handler of its own when it is imported before logging has a
    handler (which depends on what a pytest-xdist worker imported first): they propagate here, as the train app's
    logging config (``conf/hydra/job_logging``) lets them reach its handlers. The examples, imported in-process by
    their tests, quiet Lightning's loggers to ERROR: each test starts from Lightning's own INFO.
    """
    import logging

    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        monkeypatch.setattr(logger, "propagate", True)
        logger.setLevel(logging.INFO)
    yield
    for logger, level in zip(loggers, levels, strict=True):
        logger.setLevel(level)
