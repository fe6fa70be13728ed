"""Every example script at its reduced size (``--quick``): the numbers it prints say what its picture shows."""

from __future__ import annotations

import importlib
import math
import re
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
NUMBER = r"(-?[0-9.]+(?:e[-+]?[0-9]+)?)"


@pytest.fixture(scope="module", autouse=True)
def _examples_on_path():
    sys.path.insert(0, str(EXAMPLES))
    yield
    sys.path.remove(str(EXAMPLES))


def run_example(name: str, out: Path, capsys) -> str:
    """Run ``examples/<name>.py --quick --out <out>`` in this process; return what it printed."""
    module = importlib.import_module(name)
    module.main(["--quick", "--out", str(out), "--runs", str(out / "runs")])
    printed = capsys.readouterr().out
    assert (out / f"example_{name}.png").is_file()
    return printed


def values(pattern: str, text: str) -> list[float]:
    match = re.search(pattern, text, re.MULTILINE)
    assert match, f"{pattern!r} not in:\n{text}"
    return [float(group) for group in match.groups()]


def test_all_examples_are_tested():
    scripts = sorted(path.stem for path in EXAMPLES.glob("[0-9][0-9]_*.py"))
    tested = sorted(name.removeprefix("test_") for name in globals() if re.fullmatch(r"test_\d\d_\w+", name))
    assert scripts == tested and len(scripts) == 11


def test_01_learning_rate(tmp_path, capsys):
    out = run_example("01_learning_rate", tmp_path, capsys)
    (x1,) = values(rf"^lr=0\.125: x after 1 step = {NUMBER},", out)
    assert abs(x1) < 1e-12
    (loss,) = values(rf"^lr=0\.3: x after 1 step = \S+, loss after 20 steps = {NUMBER} \(start 16\.0", out)
    assert loss > 16.0 * 1.96**20 * 0.99  # the loss grows by (1 - 8 * 0.3)² = 1.96 per step
    (converged,) = values(rf"^lr=0\.2: .* loss after 20 steps = {NUMBER}", out)
    (crawled,) = values(rf"^lr=0\.01: .* loss after 20 steps = {NUMBER}", out)
    assert converged < 1e-6 and 0.1 < crawled < 16.0  # 0.01: x shrinks by only 0.92 per step
    level, momentum_step, plain_step, overshoot = values(
        rf"^momentum 0\.9 lr=0\.01 reaches loss {NUMBER} at step (\d+), plain SGD lr=0\.03 at step (\d+); "
        rf"momentum overshoots to x = {NUMBER}",
        out,
    )
    assert level < 0.2 and momentum_step < plain_step and overshoot < -1.0


def test_02_ewa(tmp_path, capsys):
    out = run_example("02_ewa", tmp_path, capsys)
    for beta in (0.8, 0.9, 0.95, 0.98):
        newest, ratio, total, adam = values(
            rf"^beta={beta}: weight of newest = {NUMBER}, .* \(ratio {NUMBER} ~ 1/e\), .* of the total {NUMBER}; "
            rf"Adam exp_avg max \|diff\| = {NUMBER}",
            out,
        )
        assert newest == pytest.approx(1 - beta) and total == pytest.approx(1.0, abs=1e-6)
        assert 0.32 < ratio < 0.37 and adam < 1e-12


def test_03_optimizers(tmp_path, capsys):
    out = run_example("03_optimizers", tmp_path, capsys)
    rosenbrock = dict(re.findall(rf"(\w+)={NUMBER}", out.splitlines()[0].split(":", 1)[1]))
    rosenbrock = {name: float(value) for name, value in rosenbrock.items()}
    assert len(rosenbrock) == 11
    assert rosenbrock["Momentum"] < rosenbrock["SGD"] / 100 and rosenbrock["Nesterov"] < rosenbrock["SGD"] / 100
    assert rosenbrock["Adam"] < rosenbrock["SGD"]
    escapes = dict(re.findall(r"(\w+)=(None|\d+)", out.splitlines()[1].split(":", 1)[1]))
    assert escapes["SGD"] == escapes["Momentum"] == escapes["Nesterov"] == "None"
    assert all(int(escapes[name]) < 40 for name in ("Adagrad", "RMSprop", "Adam", "AdamW", "Adamax", "NAdam"))


def test_04_batch_sizes(tmp_path, capsys):
    out = run_example("04_batch_sizes", tmp_path, capsys)
    jitter = {}
    for size in ("null", "1", "128"):
        steps, val_loss, jitter[size] = values(
            rf"^batch_size={size} \(.*\): (\d+) steps, final val/loss = {NUMBER}, train-loss jitter = {NUMBER}", out
        )
        assert steps == 60 and 0.0 < val_loss < 2.0
    assert jitter["null"] < jitter["128"] < jitter["1"]


def test_05_schedules(tmp_path, capsys):
    out = run_example("05_schedules", tmp_path, capsys)
    (step_final,) = values(rf"^step: default lr\[0\]=0\.1 peak=0\.1@0 lr\[114\]={NUMBER}$", out)
    assert step_final == pytest.approx(0.1 * 0.1**3)  # step_size 30, gamma 0.1: cut at 30, 60, 90
    (peak_step,) = values(r"^warmup_cosine: default lr\[0\]=0 peak=0\.1@(\d+) ", out)
    assert peak_step == 12  # warmup_ratio 0.1 of 115 steps
    head, default = values(
        rf"^per group \(lr_scale\): head lr\[0\]=0 peak={NUMBER}@12 .*default lr\[0\]=0 "
        rf"peak={NUMBER}@12",
        out,
    )
    assert head == pytest.approx(0.1 * default)
    assert "plateau: cut after validation runs (epochs) [10, 13], lr then ['0.05', '0.025']" in out
    (wsd_final,) = values(rf"^wsd: default lr\[0\]=0 peak=0\.1@12 lr\[114\]={NUMBER}$", out)
    assert wsd_final == pytest.approx(0.1 * (1 - math.sqrt(22 / 23)), rel=1e-3)  # 1-sqrt over the last 23 steps
    assert re.search(r"^cosine_restarts: default lr\[0\]=0\.1 peak=0\.1@0 lr\[114\]=", out, re.MULTILINE)
    for name in ("multistep", "exponential", "cosine", "cyclic", "onecycle", "inverse_sqrt", "sequential"):
        assert re.search(rf"^{name}: default lr\[0\]=", out, re.MULTILINE)
    (head_final,) = values(rf"^LambdaLR per group: head lr\[0\]=0\.05 peak=0\.05@0 lr\[114\]={NUMBER};", out)
    assert head_final == pytest.approx(0.05 * 0.97**114, rel=1e-3)


def test_06_gradient_clipping(tmp_path, capsys):
    out = run_example("06_gradient_clipping", tmp_path, capsys)
    runs = {}
    for kind in ("unclipped", "clipped"):
        runs[kind] = values(
            rf"^seed=0 {kind}: steps=(\d+) final val/acc={NUMBER} max grad norm={NUMBER} median grad norm={NUMBER} "
            rf"max/median={NUMBER} max post-clip norm={NUMBER} max train/loss={NUMBER} last-20 train/loss={NUMBER}$",
            out,
        )
    steps, _, unclipped_max, _, unclipped_ratio, unclipped_after, unclipped_loss, _ = runs["unclipped"]
    steps_clipped, _, clipped_max, _, _, clipped_after, clipped_loss, _ = runs["clipped"]
    assert steps == steps_clipped == 32
    assert unclipped_after == unclipped_max and clipped_after <= 0.1 + 1e-3 < clipped_max
    # Within 32 steps the unclipped norm spikes far above its median and the loss jumps far above chance (ln 2);
    # clipped, the same seed's loss stays lower.
    assert unclipped_ratio > 5 and unclipped_loss > 2 * math.log(2) and clipped_loss < unclipped_loss
    assert re.search(rf"^mean val/acc: clipped at 0\.1 = {NUMBER}, unclipped = {NUMBER}", out, re.MULTILINE)


def test_07_batchnorm(tmp_path, capsys):
    out = run_example("07_batchnorm", tmp_path, capsys)
    _, in_std, out_mean, out_std = values(
        rf"^features\.1 at step \d+: input mean={NUMBER} std={NUMBER}; output mean={NUMBER} std={NUMBER}$", out
    )
    assert abs(out_mean) < 0.01 and out_std == pytest.approx(1.0, abs=0.01) and in_std < 0.5
    _, train_std, _, eval_std, _, fresh_std = values(
        rf"train mode \(batch statistics\): {NUMBER} / {NUMBER}; eval mode, after \d+ logged steps: {NUMBER} / "
        rf"{NUMBER}; eval mode, fresh layer \(mean 0, var 1\): {NUMBER} / {NUMBER}$",
        out,
    )
    # After only 20 steps the running statistics are still on their way from (0, 1) to the batch statistics.
    assert train_std == pytest.approx(1.0, abs=0.05) and fresh_std < eval_std < train_std + 0.05


def test_08_recipes(tmp_path, capsys):
    out = run_example("08_recipes", tmp_path, capsys)
    for name in ("cnn", "rnn", "transformer", "rnn, no clipping"):
        accuracy, steps, norm = values(
            rf"^{name}: val/acc = {NUMBER}, steps = (\d+), max grad norm before clipping = {NUMBER}, logs: ", out
        )
        assert 0.0 <= accuracy <= 1.0 and steps == 4 and norm > 0


def test_09_existing_model(tmp_path, capsys):
    out = run_example("09_existing_model", tmp_path, capsys)
    keys = out.splitlines()[0].removeprefix("logged keys: ").split(", ")
    assert {"lr-AdamW/default", "lr-AdamW/no_decay", "grad_norm/total", "grad_norm/clipped"} <= set(keys)
    before, steps, after = values(rf"^validation nll before = {NUMBER}, after (\d+) steps = {NUMBER};", out)
    assert steps == 16 and after < before


def test_10_resume(tmp_path, capsys):
    out = run_example("10_resume", tmp_path, capsys)
    stopped, resumed, logged, total, difference = values(
        rf"^stopped after step (\d+), resumed from step (\d+); (\d+) of (\d+) steps logged; "
        rf"max \|lr resumed - lr uninterrupted\| = {NUMBER}$",
        out,
    )
    assert resumed == stopped + 1 and logged == total == 16 and difference == 0.0


def test_11_lr_range_test(tmp_path, capsys):
    out = run_example("11_lr_range_test", tmp_path, capsys)
    for name in ("sgd", "adamw"):
        suggestion, lightnings, configured, _, searched, first, last = values(
            rf"^{name}: suggestion {NUMBER} \(steepest descent against log\(lr\)\), Lightning's {NUMBER}, "
            rf"optimizer\.lr after lr_find {NUMBER}; smoothed loss there {NUMBER}; (\d+) lrs searched, {NUMBER} to "
            rf"{NUMBER}$",
            out,
        )
        # Lightning's lr finder sets model.lr, i.e. optim_config.optimizer.lr, to its own suggestion.
        assert configured == lightnings and first == 1e-8 and first < suggestion <= last <= 10.0
        assert 13 <= searched <= 20
    accuracies = [float(acc) for acc in re.findall(rf"lr \S+: val/acc {NUMBER}", out.splitlines()[2])]
    assert len(accuracies) >= 4 and all(0.0 <= acc <= 1.0 for acc in accuracies)
    suggested, _, best = values(
        rf"^adamw: suggestion lr \S+ val/acc {NUMBER}; Lightning's lr \S+ val/acc {NUMBER}; best of the sweep lr \S+ "
        rf"val/acc {NUMBER}$",
        out,
    )
    assert 0.0 <= suggested <= 1.0 and 0.0 <= best <= 1.0
