"""``lightning-optim-train ckpt_path=...`` loads a checkpoint as data: a pickle payload in it never runs, from a
local path even with ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``, and from a URL (Lightning's default there unpickles)."""

from __future__ import annotations

import functools
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from tests.cli.apps import TINY, run_app_expecting_failure

TRAIN = "lightning_optim.cli.train"


class Payload:
    """Unpickling it creates ``marker``: what an attacker's checkpoint would do with a worse call."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


@pytest.fixture
def malicious(tmp_path):
    marker = tmp_path / "marker"
    checkpoint = tmp_path / "malicious.ckpt"
    torch.save({"state_dict": {}, "global_step": 0, "payload": Payload(marker)}, checkpoint)
    return checkpoint, marker


def assert_payload_would_have_run(checkpoint: Path, marker: Path) -> None:
    """The control: unpickling the checkpoint does create the marker, so its absence above means something."""
    assert not marker.exists()
    torch.load(checkpoint, weights_only=False)
    assert marker.exists()


def assert_refused_naming_the_payload(result) -> None:
    """The app stopped on the checkpoint's content, naming the key that holds the object and what it needs."""
    assert "`payload` needs io.open" in result.stderr  # the builtin open pickles as io.open


def test_a_local_checkpoint_runs_no_code_even_when_torch_is_told_to_unpickle(malicious, tmp_path, monkeypatch):
    checkpoint, marker = malicious
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    result = run_app_expecting_failure(
        TRAIN, *TINY, f"ckpt_path={checkpoint}", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path
    )
    assert_refused_naming_the_payload(result)
    assert_payload_would_have_run(checkpoint, marker)


def test_a_checkpoint_from_a_url_runs_no_code(malicious, tmp_path):
    checkpoint, marker = malicious
    requested: list[str] = []

    class RecordingHandler(SimpleHTTPRequestHandler):
        def do_GET(self):
            requested.append(self.path)
            super().do_GET()

    handler = functools.partial(RecordingHandler, directory=str(tmp_path))
    with ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}/{checkpoint.name}"
        result = run_app_expecting_failure(
            TRAIN, *TINY, f"ckpt_path={url}", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path
        )
        server.shutdown()
    assert f"/{checkpoint.name}" in requested  # it was fetched
    assert_refused_naming_the_payload(result)
    assert_payload_would_have_run(checkpoint, marker)


def test_trust_checkpoint_spelt_as_a_string_is_refused_and_the_payload_never_runs(malicious, tmp_path):
    checkpoint, marker = malicious
    overrides = [f"ckpt_path={checkpoint}", "trust_checkpoint=no", f"hydra.run.dir={tmp_path / 'run'}"]
    result = run_app_expecting_failure(TRAIN, *TINY, *overrides, cwd=tmp_path)
    assert "trust_checkpoint = 'no' is not valid. Expected true or false, unquoted (e.g. trust_checkpoint=false)" in (
        result.stderr
    )
    assert_payload_would_have_run(checkpoint, marker)
