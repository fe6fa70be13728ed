"""The markdown of a ``gpu_check.py`` report: one table per check, in the shapes of docs/performance.md.

Examples:
    >>> text = markdown({"environment": {"card": "CPU (x86_64, 2 cores)", "torch": "2.13", "lightning": "2.6.6"},
    ...                  "quick": True, "command": "gpu_check.py --quick", "wall_seconds": 1.0,
    ...                  "checks": {"fsdp": {"status": "skipped", "reason": "needs CUDA", "seconds": 0.0}}})
    >>> "| fsdp | skipped | 0.0 | needs CUDA |" in text
    True
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

HEADERS = {
    "summary": ("check", "status", "seconds", "verdicts"),
    "host_syncs": (
        "monitors",
        "non-logging: `item`",
        "non-logging: to host",
        "non-logging: sync warnings",
        "logging: `item`",
        "logging: to host",
        "logging: sync warnings",
    ),
    "amp": (
        "case",
        "clip folded",
        "skipped steps: folded / unfolded / plain",
        "max abs diff folded vs unfolded",
        "folded vs plain",
        "tolerance (rtol, atol)",
        "within",
    ),
    "distributed": ("check", "result", "verdict"),
    "sharded": (
        "case",
        "mesh (dp, tp)",
        "logged",
        "parameters",
        "clipping",
        "ZClip / guard statistics",
        "ranks apart",
        "`all_reduce` per step as on CPU",
    ),
    "clip_step": (
        "model (parameters, tensors)",
        "repetitions",
        "step ms",
        "torch ms",
        "folded ms",
        "floor ms",
        "folded / torch",
        "torch / floor",
        "folded / floor",
        "read GB/s",
    ),
    "overhead": ("model", "log every", "A/A", "recipe", "mixin alone", "mixin + monitors", "monitoring / recipe"),
}
"""Each table's header row, by check (the test of the script reads them)."""
KINDS = ("non_logging", "logging")
MONITOR_ROWS = ("none", "GradNormMonitor", "LRMonitor", "BatchNormMonitor", "all")


def table(headers: Iterable[str], rows: Iterable[Iterable[Any]]) -> list[str]:
    """A markdown table; the first column left-aligned, the others right-aligned.

    Examples:
        >>> table(("a", "b"), [(1, 2)])
        ['| a | b |', '|---|---:|', '| 1 | 2 |']
    """
    headers = list(headers)
    lines = ["| " + " | ".join(headers) + " |", "|---|" + "---:|" * (len(headers) - 1)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def number(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:+.1f}%"


def verdict_text(verdicts: dict[str, bool | None]) -> str:
    return "; ".join(f"{'met' if ok else 'MISSED'}: {name}" for name, ok in verdicts.items()) or ""


def host_syncs(result: dict[str, Any]) -> list[str]:
    def cell(counts: dict[str, Any], count: str) -> str:
        total, over = counts.get(f"{count}_per_step"), counts.get(f"{count}_per_step_over_none")
        if total is None:
            return "n/a"
        return f"{total:.2f}" + ("" if over is None else f" ({over:+.2f})")

    rows = []
    for name in MONITOR_ROWS:
        counts = result["per_config"][name]
        label = {"none": "none (mixin, no monitor)", "all": "all (+ TensorBoardDashboard)"}.get(name, name)
        cells = [cell(counts[kind], count) for kind in KINDS for count in ("items", "to_host", "sync_warnings")]
        rows.append((label, *cells))
    return [
        f"{result['model']}, `log_every_n_steps={result['log_every_n_steps']}`, {result['measured_steps']} measured "
        "steps; per step, in parentheses the difference to no monitor. `item`: `aten::_local_scalar_dense` calls "
        "(`item()`, `float(t)`, `bool(t)`); to host: device-to-CPU copies (`tolist()`, `.cpu()`); sync warnings: "
        '`torch.cuda.set_sync_debug_mode("warn")`, every synchronizing call (CUDA only).',
        "",
        *table(HEADERS["host_syncs"], rows),
        *callers(result["sync_callers_all_over_none"]),
    ]


def callers(counts: dict[str, int]) -> list[str]:
    """The lines that synced with all monitors and not without them (sync-debug warnings), how often in all."""
    if not counts:
        return []
    listed = ", ".join(f"`{line}` x{n}" for line, n in counts.items())
    return ["", f"Lines that synced with all monitors and not without (over the measured steps): {listed}."]


def amp(result: dict[str, Any]) -> list[str]:
    rows = []
    for case, entry in result["cases"].items():
        skipped = entry["skipped_steps"]
        rows.append(
            (
                case,
                "yes" if all(entry["clip_folded"]) else f"no ({entry['clip_folded']})",
                "n/a (no GradScaler)"
                if skipped is None
                else " / ".join(str(skipped[path]) for path in ("folded", "unfolded", "reference")),
                f"{entry['folded_vs_unfolded']['max_abs']:.2e}",
                f"{entry['folded_vs_reference']['max_abs']:.2e}",
                f"{entry['tolerance']['rtol']:g}, {entry['tolerance']['atol']:g}",
                "yes" if all(entry["within_tolerance"].values()) else f"NO {entry['within_tolerance']}",
            )
        )
    steps = next(iter(result["cases"].values()))["steps"]
    return [
        f"{result['model']}, `gradient_clip_val={result['gradient_clip_val']}`, {steps} steps; folded: fused "
        "optimizer, the mixin's default; unfolded: `fold_clipping = False`; plain: Lightning's own clipping and the "
        "unfused optimizer.",
        "",
        *table(HEADERS["amp"], rows),
    ]


def distributed(checks: dict[str, Any]) -> list[str]:
    rows = []
    bn = checks.get("sync_batchnorm", {})
    if bn.get("status") == "ok":
        rows.append(
            (
                '`Trainer(strategy="ddp", devices=1, sync_batchnorm=True)` + `BatchNormMonitor`',
                f"{bn['sync_batchnorm_layers']} SyncBatchNorm layers; {bn['keys']} keys (missing "
                f"{len(bn['missing_keys'])}, extra {len(bn['extra_keys'])} against one device); {bn['values']} values, "
                f"{bn['nonfinite_values']} non-finite; max abs diff to one device "
                f"{number(bn['max_abs_difference_to_single_device'], 6)}",
                verdict_text(bn["verdicts"]),
            )
        )
    else:
        rows.append(("sync_batchnorm", status_text(bn), ""))
    fsdp = checks.get("fsdp", {})
    if fsdp.get("status") == "ok":
        rows.append(
            (
                f"FSDP, 1 device ({fsdp['strategy']}), norm clipping + `GradNormMonitor`",
                f"`grad_norm/total` at {len(fsdp['grad_norm_total'])} of {fsdp['steps']} steps against an unsharded "
                f"`get_total_norm`: max rel diff {number(fsdp['max_rel_difference'], 8)} (first step "
                f"{number(fsdp['first_step_rel_difference'], 8)})",
                verdict_text(fsdp["verdicts"]),
            )
        )
    else:
        rows.append(("fsdp", status_text(fsdp), ""))
    return table(HEADERS["distributed"], rows)


def sharded(entry: dict[str, Any]) -> list[str]:
    """The max relative difference of each sharded case to one GPU, per kind; a case or check not run, why."""
    blank = [""] * (len(HEADERS["sharded"]) - 2)
    if entry["status"] != "ok":
        return table(HEADERS["sharded"], [("all", status_text(entry), *blank)])
    rows = []
    for case, result in entry["cases"].items():
        if "skipped" in result:
            rows.append((case, f"skipped: {result['skipped']}", *blank))
            continue
        worst = result["max_rel_difference"]
        differences = (f"{worst[kind]:.1e}" for kind in ("logged", "params", "clipping", "statistics", "ranks"))
        mesh = " x ".join(map(str, result["mesh"]))
        rows.append((case, mesh, *differences, "yes" if result["all_reduce_as_expected"] else "NO"))
    return [
        f"`ModelParallelStrategy` on {entry['gpus']} GPUs (NCCL) against one GPU: the largest relative difference, "
        "per kind (`tests/sharded/runs.py`'s cases and `differences`).",
        "",
        *table(HEADERS["sharded"], rows),
    ]


def clip_step(result: dict[str, Any]) -> list[str]:
    rows = []
    for r in result["results"]:
        ms = r["ms"]
        rows.append(
            (
                f"{r['size']} ({r['parameters'] / 1e6:.1f}M, {r['tensors']})",
                r["repetitions"],
                number(ms["step"]),
                number(ms["torch"]),
                number(ms["folded"]),
                number(r["floor_ms"]),
                f"**{r['folded_over_torch']:.3f}**",
                f"{r['torch_over_floor']:.3f}",
                f"{r['folded_over_floor']:.3f}",
                f"{r['read_gb_per_s']:.0f}",
            )
        )
    return ["Fused AdamW, float32, medians.", "", *table(HEADERS["clip_step"], rows)]


def overhead(result: dict[str, Any]) -> list[str]:
    rows = []
    medians = []
    for key, run in result["runs"].items():
        model, log_every = key.split("@")
        paired, mean = run["ratios"]["derived"]["paired"], run["ratios"]["derived"]["mean"]
        cells = [
            f"{percent(paired[k])} / {percent(mean[k])}"
            for k in (
                "aa_noise_fraction",
                "recipe_overhead_fraction",
                "mixin_alone_overhead_fraction",
                "monitoring_overhead_fraction",
            )
        ]
        ratio = [paired["monitoring_over_recipe"], mean["monitoring_over_recipe"]]
        cells.append(" / ".join(number(value, 3) for value in ratio))
        rows.append((model, log_every, *cells))
        steps = run["variants"]["plain"]["steps"]
        medians.append(
            f"interval {log_every} ({steps} steps each): "
            + ", ".join(f"{variant} {entry['median_ms']:.2f}" for variant, entry in run["variants"].items())
        )
    return [
        f"{result['model']} ({result['parameters']:,} parameters, batch {result['batch_size']}, "
        f"{result['image_size']}x{result['image_size']} random images); overhead relative to plain Lightning, "
        "paired median / ratio of means.",
        "",
        *table(HEADERS["overhead"], rows),
        "",
        "Median step times (ms): " + "; ".join(medians) + ".",
    ]


SECTIONS: dict[str, tuple[str, Callable[[dict[str, Any]], list[str]]]] = {
    "host_syncs": ("Host syncs per step", host_syncs),
    "amp": ("AMP with norm clipping: folded, unfolded, plain Lightning", amp),
    "clip_step": ("Clip by norm + fused AdamW step (`benchmarks/clip_step.py`)", clip_step),
    "overhead": ("Monitoring overhead on a ResNet-18-like CNN (`benchmarks/overhead.py`)", overhead),
}


def status_text(entry: dict[str, Any]) -> str:
    if not entry:
        return "not run"
    if entry["status"] == "skipped":
        return f"skipped: {entry['reason']}"
    if entry["status"] == "error":
        return f"error: {entry['error']}"
    return "ok"


def markdown(report: dict[str, Any]) -> str:
    env, checks = report["environment"], report["checks"]
    lines = [
        f"## GPU checks: {env['card']}",
        "",
        f"`{report['command']}`{' (quick: tiny sizes, not for the docs)' if report['quick'] else ''}; torch "
        f"{env['torch']}, lightning {env['lightning']}"
        + (f", CUDA {env['cuda']}, {env['memory_gib']} GiB" if "cuda" in env else "")
        + f"; {report.get('wall_seconds', 0):.0f} s in all.",
        "",
        *table(
            HEADERS["summary"],
            (
                (
                    name,
                    entry["status"],
                    entry["seconds"],
                    verdict_text(entry.get("verdicts", {}))
                    if entry["status"] == "ok"
                    else status_text(entry).split(": ", 1)[-1],
                )
                for name, entry in checks.items()
            ),
        ),
    ]
    for name, (title, render) in SECTIONS.items():
        if name not in checks:
            continue
        lines += ["", f"### {title}", ""]
        entry = checks[name]
        lines += render(entry) if entry["status"] == "ok" else [status_text(entry)]
    if "sync_batchnorm" in checks or "fsdp" in checks:
        lines += ["", "### SyncBatchNorm and FSDP", "", *distributed(checks)]
    if "sharded" in checks:
        lines += ["", "### FSDP2 and tensor parallelism on GPUs (NCCL)", "", *sharded(checks["sharded"])]
    return "\n".join(lines) + "\n"
