"""Gathers the benchmarks' results into docs/PERFORMANCE.md with plots.

A figure read without the machine, model and settings that produced it, or without what it leaves
out, invites the wrong conclusion. So this page puts every figure next to its provenance, its
targets and verdicts (a missed target stays visible), and what the benchmark does not show, taken
from the benchmark script's own docstring so that the page says what the script says.

Reads ``<name>.json`` for sync_latency, throughput, longform, scaleout, memory and batching from the results
folder (a missing one is listed as not run) and writes PERFORMANCE.md and img/<name>.png.

    .venv/bin/python bench/report.py [--results DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import common
import numpy as np
from common import Row
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_OUT = common.REPO_ROOT / "docs"
HTTP_COLOR, DIRECT_COLOR, IDEAL_COLOR, TARGET_COLOR = "#1f77b4", "#ff7f0e", "#7f7f7f", "#d62728"
# Settings that the provenance line already names, or that are too long for one line.
SETTINGS_SHOWN_ELSEWHERE = {"model", "compute_type", "device", "engine", "server_engine", "log_problems"}

UNITS = {"s": "s", "ms": "ms", "mb": "MB"}  # settings keys end in (or hold) their unit: audio_duration_s

Report = dict[str, Any]


@dataclass(frozen=True)
class Bench:
    name: str
    title: str
    label: str  # in the summary table
    plot: Callable[[Report], Figure] | None
    caption: Callable[[Report], str] | None


# --- reading -------------------------------------------------------------------------------------


def load(results: Path, name: str) -> Report | None:
    path = results / f"{name}.json"
    if not path.is_file():
        return None
    return dict(json.loads(path.read_text()))


def script_notes(name: str) -> tuple[str, str]:
    """(what the benchmark does, what it does not show), from its script's docstring: one source for both."""
    try:
        doc = ast.get_docstring(ast.parse((BENCH_DIR / f"{name}.py").read_text())) or ""
    except (OSError, SyntaxError):
        return "", ""
    paragraphs = [re.sub(r"``(.+?)``", r"`\1`", " ".join(p.split())) for p in doc.split("\n\n")]
    mark = "What it does not show:"
    about = [p for p in paragraphs if p and not p.startswith((".venv", mark))]
    not_shown = [p.removeprefix(mark).strip() for p in paragraphs if p.startswith(mark)]
    return "\n\n".join(about), " ".join(not_shown)


def rows_of(report: Report) -> list[Row]:
    return [(str(a), str(b), str(c), str(d)) for a, b, c, d in report.get("rows", [])]


def row_target(report: Report, figure_part: str) -> float | None:
    """The number in the target column of the first row whose figure contains ``figure_part``."""
    for figure, _, target, _ in rows_of(report):
        found = re.search(r"[\d.]+", target)
        if figure_part in figure and found:
            return float(found.group())
    return None


def problem_lines(value: Any) -> int:
    """Server log warnings and errors recorded anywhere in a result (under keys ending in log_problems)."""
    if isinstance(value, dict):
        return sum(
            len(v) if k.endswith("log_problems") and isinstance(v, list) else problem_lines(v) for k, v in value.items()
        )
    if isinstance(value, list):
        return sum(problem_lines(v) for v in value)
    return 0


# --- provenance ----------------------------------------------------------------------------------


def machine_text(report: Report) -> str:
    m = report.get("machine", {})
    system = str(m.get("platform", "")).split("-", 1)[0]
    parts = [f"{m.get('cpu_model', 'unknown CPU')}, {m.get('cpu_count', '?')} CPUs"]
    if m.get("memory_total_mb"):
        parts.append(f"{m['memory_total_mb'] / 1024:.0f} GB RAM")
    parts.append(" ".join(x for x in (system, m.get("machine", "")) if x))
    if m.get("python"):
        parts.append(f"Python {m['python']}")
    return ", ".join(p for p in parts if p)


def engine_text(report: Report) -> str:
    s = report.get("settings", {})
    if not s.get("model"):
        return str(s.get("engine", "engine not recorded"))
    device = f" on {s['device']}" if s.get("device") else ""
    return f"Whisper {s['model']} {s.get('compute_type', '')}".rstrip() + device


def when_text(report: Report) -> str:
    return str(report.get("timestamp", "time not recorded"))[:16].replace("T", " ")


def settings_text(report: Report) -> str:
    """The run's settings on one line: audio paths as file names, repeated lists summed up."""
    parts = []
    for key, value in report.get("settings", {}).items():
        if key in SETTINGS_SHOWN_ELSEWHERE:
            continue
        if key == "audio":
            value = Path(str(value)).name
        elif isinstance(value, list):
            unique = list(dict.fromkeys(map(str, value)))
            value = f"{len(value)} ({', '.join(unique)}{', repeated' if len(unique) < len(value) else ''})"
        elif isinstance(value, float):
            value = f"{value:g}"
        words = key.split("_")
        units = [UNITS[w] for w in words if w in UNITS]
        parts.append(" ".join([*(w for w in words if w not in UNITS), str(value), *units]))
    return ", ".join(parts) or "none recorded"


def footer(fig: Figure, report: Report) -> None:
    """Provenance on the image itself, so that it still says where it comes from when seen alone."""
    m = report.get("machine", {})
    text = f"{m.get('cpu_model', '?')}, {m.get('cpu_count', '?')} CPUs · {engine_text(report)} · {when_text(report)}"
    fig.text(0.01, 0.01, text, fontsize=7, color="#555555")


# --- plots ---------------------------------------------------------------------------------------


def new_figure(columns: int = 1) -> tuple[Figure, list[Axes]]:
    fig = Figure(figsize=(5.2 * columns, 3.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, columns, squeeze=False)[0]
    fig.get_layout_engine().set(rect=(0, 0.05, 1, 0.95))  # room for the footer
    return fig, list(axes)


def plot_sync(report: Report) -> Figure:
    fig, (ax,) = new_figure()
    series = [report["http"]["timings_s"], report["direct"]["timings_s"]]
    ax.boxplot(series, widths=0.5, showfliers=False, medianprops={"color": "black"})
    jitter = np.random.default_rng(0)
    for i, (values, color) in enumerate(zip(series, (HTTP_COLOR, DIRECT_COLOR), strict=True), 1):
        ax.scatter(i + jitter.uniform(-0.12, 0.12, len(values)), values, s=14, color=color, alpha=0.7, zorder=3)
    ax.set_xticks([1, 2], ["HTTP (sayit serve)", "direct (engine call)"])
    ax.set_ylabel("seconds per request")
    s = report["settings"]
    ratio = report.get("ratio_median_http_direct", 0.0)
    target = report.get("targets", {}).get("ratio_max")
    clip = f"{Path(str(s.get('audio', ''))).name} ({s.get('audio_duration_s', 0):.0f} s), one request at a time"
    ax.set_title(f"{clip}\nratio of medians {ratio:.3f}" + (f" (target ≤ {target:.2f})" if target else ""))
    footer(fig, report)
    return fig


def plot_longform(report: Report) -> Figure:
    """Wall time against length for both paths (with the async target), and the ratio per length."""
    fig, (wall, ratio) = new_figure(2)
    runs = sorted(report["runs"], key=lambda run: run["audio_duration_s"])
    minutes = [run["audio_duration_s"] / 60 for run in runs]
    growth = report.get("growth", {})
    for side, style, color, label in (("async", "o-", HTTP_COLOR, "async (chunked, HTTP)"),
                                      ("direct", "s-", DIRECT_COLOR, "direct (one call)")):  # fmt: skip
        slope = growth.get(side, {}).get("slope_s_per_min")
        label += f", {slope:.1f} s per min" if slope is not None else ""
        wall.plot(minutes, [run[side]["wall_s"] for run in runs], style, color=color, label=label, zorder=3)
    target = report.get("targets", {}).get("ratio_max")
    if target:
        wall.plot(minutes, [run["direct"]["wall_s"] * target for run in runs], ":", color=TARGET_COLOR,
                  label=f"target for async: {target:.2f} × direct")  # fmt: skip
    wall.set_ylabel("wall time (s)")
    wall.set_title("wall time by recording length")
    ratios = [run["results"]["ratio"] for run in runs]
    ratio.plot(minutes, ratios, "o-", color=HTTP_COLOR, label="async wall / direct wall", zorder=3)
    for x, value in zip(minutes, ratios, strict=True):
        ratio.annotate(f"{value:.2f}", (x, value), textcoords="offset points", xytext=(0, -14), ha="center", fontsize=8,
                       color=HTTP_COLOR)  # fmt: skip
    ratio.axhline(1.0, color=IDEAL_COLOR, linewidth=0.8, label="1: no faster than direct")
    if target:
        ratio.axhline(target, color=TARGET_COLOR, linestyle="--", linewidth=1, label=f"target ≤ {target:.2f}")
    ratio.set_ylim(0, max(1.45, max(ratios) * 1.3))  # room above the 1.0 line for the legend
    ratio.set_ylabel("ratio async / direct")
    ratio.set_title("ratio per length (lower is better)")
    for ax in (wall, ratio):
        ax.set_xlabel("recording length (min of audio)")
        ax.set_xlim(0, max(minutes) * 1.08)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper right" if ax is ratio else "upper left")
    footer(fig, report)
    return fig


def plot_throughput(report: Report) -> Figure:
    fig, (rate, latency) = new_figure(2)
    levels = report["levels"]
    clients = [level["clients"] for level in levels]
    for side, color in (("http", HTTP_COLOR), ("direct", DIRECT_COLOR)):
        label = "HTTP (sayit serve)" if side == "http" else "direct (engine calls)"
        rate.plot(clients, [lv[side]["audio_s_per_s"] for lv in levels], "o-", color=color, label=label)
        p95 = [lv[side]["latency"].get("p95_s", math.nan) for lv in levels]
        latency.plot(clients, p95, "o-", color=color, label=label)
    for level in levels:
        if level["http"].get("rejected_503"):
            point = (level["clients"], level["http"]["audio_s_per_s"])
            rate.annotate(f"{level['http']['rejected_503']}× 503", point, textcoords="offset points", xytext=(0, 8),
                          ha="center", fontsize=7, color=HTTP_COLOR)  # fmt: skip
    for ax in (rate, latency):
        ax.set_xscale("log", base=2)
        ax.set_xticks(clients, [str(c) for c in clients])
        ax.set_xlabel("concurrent clients")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    rate.set_ylabel("audio seconds per second")
    rate.set_title("throughput")
    rate.legend(fontsize=8)
    latency.set_ylabel("p95 latency (s)")
    latency.set_title("p95 latency (answered requests)")
    footer(fig, report)
    return fig


def plot_scaleout(report: Report) -> Figure:
    fig, (wall, overhead) = new_figure(2)
    runs = report["runs"]
    nodes = [run["nodes"] for run in runs]
    wall.plot(nodes, [run["ideal_s"] for run in runs], "s--", color=IDEAL_COLOR, label="ideal")
    wall.plot(nodes, [run["wall_s"] for run in runs], "o-", color=HTTP_COLOR, label="measured wall", zorder=3)
    ratio_target = row_target(report, "wall / ideal")
    if ratio_target:
        wall.plot(nodes, [run["ideal_s"] * ratio_target for run in runs], ":", color=TARGET_COLOR,
                  label=f"target: {ratio_target:g} × ideal")  # fmt: skip
    for run in runs:
        point = (run["nodes"], run["wall_s"])
        wall.annotate(f"×{run['ratio']:.3f}", point, textcoords="offset points", xytext=(6, -12), fontsize=7,
                      color=HTTP_COLOR)  # fmt: skip
    wall.set_ylabel("wall time after the 202 (s)")
    wall.set_title("wall vs ideal")
    wall.legend(fontsize=8)
    overhead.bar([str(n) for n in nodes], [run["overhead_ms_per_chunk"] for run in runs], color=HTTP_COLOR, width=0.5)
    overhead_target = row_target(report, "overhead per chunk")
    if overhead_target:
        overhead.axhline(overhead_target, color=TARGET_COLOR, linestyle="--", linewidth=1,
                         label=f"target ≤ {overhead_target:g} ms")  # fmt: skip
        overhead.legend(fontsize=8)
    overhead.set_ylabel("overhead per chunk (ms)")
    overhead.set_title("orchestration overhead")
    for ax in (wall, overhead):
        ax.set_xlabel("queue nodes")
        ax.grid(alpha=0.3)
    wall.set_xscale("log", base=2)
    wall.set_xticks(nodes, [str(n) for n in nodes])
    wall.set_ylim(bottom=0)
    footer(fig, report)
    return fig


def plot_memory(report: Report) -> Figure:
    fig, (ax,) = new_figure()
    nodes = report["nodes"]
    x = np.arange(len(nodes))
    for offset, key, label, color in ((-0.2, "rest_mb", "at rest", IDEAL_COLOR),
                                      (0.2, "after_load_mb", "after load", HTTP_COLOR)):  # fmt: skip
        bars = ax.bar(x + offset, [node[key] for node in nodes], width=0.4, label=label, color=color)
        ax.bar_label(bars, [f"{node[key]:.0f}" for node in nodes], padding=2, fontsize=8)
    target = row_target(report, "at rest")
    if target:
        ax.axhline(target, color=TARGET_COLOR, linestyle="--", linewidth=1, label=f"target ≤ {target:g} MB")
    ax.set_xticks(x, [f"{node['role']} ({node['slots']} slots)" for node in nodes])
    ax.set_ylabel("resident set (MB)")
    ax.set_title("memory per node process")
    ax.legend(fontsize=8)
    footer(fig, report)
    return fig


def plot_batching(report: Report) -> Figure:
    """The lone request's p50/p90 against the bare engine, the clients' throughput against both
    anchors, and the long recording's wall against the batched pipeline's."""
    fig, (lone, rate, long) = new_figure(3)
    names = ("node", "bare")
    for offset, key, alpha in ((-0.2, "p50_s", 1.0), (0.2, "p90_s", 0.5)):
        values = [report["lone"][name][key] for name in names]
        bars = lone.bar(np.arange(2) + offset, values, width=0.4, color=[HTTP_COLOR, DIRECT_COLOR], alpha=alpha,
                        label=key.removesuffix("_s"))  # fmt: skip
        lone.bar_label(bars, [f"{v:.2f}" for v in values], padding=2, fontsize=7)
    lone.set_xticks([0, 1], ["node (HTTP)", "bare engine"])
    lone.set_ylabel("seconds per request")
    lone.set_title(f"lone request, node / bare p50 {report['lone']['ratio_p50']:.2f}", fontsize=9)
    lone.legend(fontsize=7)
    clients = report["clients"]
    labels = ["node (HTTP)", "threads\n(worker per core)", "batched\npipeline"]
    rates = [clients[side]["audio_s_per_s"] for side in ("node", "threads", "pipeline")]
    bars = rate.bar(labels, rates, color=[HTTP_COLOR, IDEAL_COLOR, DIRECT_COLOR], width=0.5)
    rate.bar_label(bars, [f"{v:.1f}" for v in rates], padding=2, fontsize=7)
    rate.set_ylabel("audio seconds per second")
    rate.set_title(f"{clients['clients']} clients, {clients['clip_duration_s']:.0f} s clips", fontsize=9)
    longform = report["longform"]
    walls = [longform["job"]["wall_s"], longform["pipeline"]["wall_s"]]
    bars = long.bar(["node job", "batched\npipeline"], walls, color=[HTTP_COLOR, DIRECT_COLOR], width=0.5)
    long.bar_label(bars, [f"{v:.1f}" for v in walls], padding=2, fontsize=7)
    target = report.get("targets", {}).get("job_vs_pipeline_max")
    if target:
        long.axhline(walls[1] * target, color=TARGET_COLOR, linestyle="--", linewidth=1,
                     label=f"target ≤ {target:g} × pipeline")  # fmt: skip
        long.legend(fontsize=7)
    long.set_ylabel("wall time (s)")
    long.set_title(f"{longform['audio_duration_s'] / 60:.0f} min recording", fontsize=9)
    for ax in (lone, rate, long):
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3, axis="y")
    footer(fig, report)
    return fig


# --- captions: what each plot shows and leaves out -----------------------------------------------


def caption_sync(report: Report) -> str:
    s = report["settings"]
    return (
        f"Each point is one of {s.get('runs', '?')} requests with one {s.get('audio_duration_s', 0):.0f} s clip, "
        "sent one at a time: HTTP is timed from connecting to the last byte of the answer, direct is decode + "
        "transcribe in one process, after the server stopped. The boxes span the middle half of the runs; the axis "
        "does not start at zero."
    )


def caption_longform(report: Report) -> str:
    targets = report.get("targets", {})
    ratio_max, wer_max = targets.get("ratio_max", math.inf), targets.get("wer_max", math.inf)
    lengths = "; ".join(
        f"{run['minutes']:g} min: ratio {r['ratio']:.3f} {shown_verdict(common.verdict(r['ratio'] <= ratio_max))}, "
        f"WER {r['wer'] * 100:.1f} % {shown_verdict(common.verdict(r['wer'] <= wer_max))}"
        for run in sorted(report["runs"], key=lambda run: run["audio_duration_s"])
        for r in (run["results"],)
    )
    return (
        f"One run of each path per length ({lengths}), on synthetic recordings of repeated clips: no spread is "
        "shown, so a single noisy run moves a ratio. Left, the legend gives each path's least-squares slope (wall "
        "seconds per minute of audio); async meets its target where it lies below the dotted line. Accuracy (WER "
        "of async against direct) is not plotted: it is in this caption and the table."
    )


def caption_throughput(report: Report) -> str:
    s = report["settings"]
    return (
        f"Each level runs for {s.get('duration_s_per_level', '?'):g} s with clients posting "
        f"{s.get('audio', 'a clip')} in a loop; the clients run on the server's own cores. HTTP latency counts "
        "answered requests only: refused ones (503) are marked on the throughput line."
    )


def caption_scaleout(report: Report) -> str:
    s = report["settings"]
    return (
        f"Every node runs a bench-only engine that takes a fixed {s.get('chunk_s', '?'):g} s per chunk, all on one "
        "machine: the figure shows SayIt's orchestration cost around the engine, not transcription speed, and no "
        "network between machines."
    )


def caption_memory(report: Report) -> str:
    return "Resident set of each node process alone (psutil RSS), at rest and once after the load described above."


def caption_batching(report: Report) -> str:
    s, c = report["settings"], report["clients"]
    return (
        f"One node at its defaults (batch size {s.get('batch_size', '?')}, {s.get('batch_lanes', 1)} lanes), the "
        "anchors in the benchmark process, "
        f"interleaved with it: lone requests one by one ({report['lone']['requests']} each), the clients' uploads "
        f"in rounds ({c['requests']} uploads, {c['threads']['clips']} clips per anchor), the long recording "
        f"{report['longform']['runs']} time(s) each (medians). Non-200 answers under load: "
        f"{c['answered_202']} × 202, {c['answered_503']} × 503, {c['other_non_200']} other."
    )


BENCHES = (
    Bench("sync_latency", "Sync latency: SayIt over HTTP vs the bare engine", "sync latency", plot_sync, caption_sync),
    Bench("throughput", "Throughput under load", "throughput", plot_throughput, caption_throughput),
    Bench("longform", "Long form: async chunked path vs one engine call", "long form", plot_longform, caption_longform),
    Bench("scaleout", "Scale-out, simulated", "scale-out (simulated)", plot_scaleout, caption_scaleout),
    Bench("memory", "Memory per node", "memory", plot_memory, caption_memory),
    Bench("batching", "Continuous batching", "batching", plot_batching, caption_batching),
)


# --- the page ------------------------------------------------------------------------------------


def slug(title: str) -> str:
    """The anchor that Markdown renderers such as GitHub's give a heading."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def shown_verdict(cell: str) -> str:
    return "**MISS**" if cell == "MISS" else cell


def summary_section(found: Sequence[tuple[Bench, Report]]) -> list[str]:
    lines = ["| benchmark | figure | target | measured | verdict |", "|---|---|---|---|---|"]
    targets = [(bench, row) for bench, report in found for row in rows_of(report) if row[2]]
    for bench, (figure, value, target, result) in targets:
        link = f"[{bench.label}](#{slug(bench.title)})"
        lines.append(f"| {link} | {figure} | {target} | {value} | {shown_verdict(result)} |")
    if not targets:
        return ["No benchmark result with a target was found."]
    missed = sum(row[3] == "MISS" for _, row in targets)
    met = f"{len(targets) - missed} of {len(targets)} targets met"
    return [*lines, "", f"{met}; {missed} missed." if missed else f"{met}."]


def _why_longform(report: Report) -> str:
    runs = ", ".join(
        f"{run['minutes']:g} min: async {run['results']['wer_async_vs_clips'] * 100:.1f} %, "
        f"direct {run['results']['wer_direct_vs_clips'] * 100:.1f} %"
        for run in report.get("runs", [])
    )
    return (
        "The word error rate here compares two machine transcripts, not one against a human reference. The direct "
        "call decodes the whole file as one stream, each window conditioned on the text before it, so one mistake "
        "carries into the next windows (repeated or skipped sentences); the chunked path decodes each chunk of at "
        "most 30 s on its own. Scored against each clip transcribed alone, a reference that neither path's long "
        f"context shapes ({runs}), the chunked path's score holds level across lengths while the direct call's "
        "drifts, so "
        "most of the gap is the direct call's own long-context errors, not words chunking loses. What would close "
        "it: human reference transcripts for long recordings (the corpus has them only for its short clips), then "
        "a target on each path against the reference; or both paths with `condition_on_previous_text` off, which "
        "would make this figure about chunk boundaries alone."
    )


def _why_scaleout(report: Report) -> str:
    return (
        "The excess is tens of milliseconds over a whole run (wall minus ideal), spread over the chunks and "
        "multiplied by the slots, so at 4 and 8 nodes one scheduling hiccup moves the figure by several "
        "milliseconds: up to 8 queue nodes, the api node and a redis-server share 2 cores here, and each chunk "
        "costs a stream read, an audio GET, a FLAC decode and a Lua write. The wall-time target holds at every "
        "node count. What would close it: nodes on their own cores (as in a real cluster), or reading a chunk's "
        "audio with its task in one round trip."
    )


def _why_batching(report: Report) -> str:
    clients, passes = report.get("clients", {}), report.get("passes")
    metrics, node = clients.get("batch_metrics", {}), clients.get("node", {})
    lanes = report.get("settings", {}).get("batch_lanes", 1)
    parts = []
    if passes:
        size = passes["batch_size"]
        parts.append(
            f"On this CPU a pass's cost decides it. The first passes of {passes['clips']} clips decoded "
            f"{passes['lanes_1_window']:.1f} audio-s/s on {passes['lanes']} one-thread lanes with one window a pass "
            f"and {passes['lanes_batch']:.1f} with {size} a pass: batching does not make a window cheaper here. "
            f"One wide pass of one window decoded {passes['wide_every_thread']:.1f} audio-s/s with its decoder on "
            f"every thread and {passes['wide_lanes_decode']:.1f} on one lane's worker: the decoder's small steps "
            "split badly across threads. Anchor (a), a one-thread worker per core decoding a window at a time, "
            "is so already the fastest way this machine decodes, and the node, which does the same work on the "
            "same cores, can at best draw level with it."
        )
    decoded, requests = metrics.get("sayit_batch_windows_decoded_total"), clients.get("requests")
    if decoded is not None and requests:
        parts.append(
            f"The node decoded {decoded:.0f} windows for {requests} uploads: {decoded - requests:.0f} rests, "
            "decoded again from their window's last complete segment as anchor (a)'s sequential path seeks on "
            "(the pipeline drops that speech, and its word error rate against the sequential path is the higher)."
        )
    pass_s, wall_s = metrics.get("sayit_batch_pass_seconds_sum"), node.get("wall_s")
    if pass_s is not None and wall_s:
        parts.append(
            f"Its {lanes} lanes were in passes {pass_s / (wall_s * lanes):.0%} of the run; the rest went to the "
            "HTTP edge and decoding uploads on the same cores, and to waits for a pass."
        )
    parts.append(
        "What would close it: a device on which a batch of windows costs less than its windows one by one, as a "
        "GPU's does (`bench/gpu.sh`); on this machine batching wins its throughput against the pipeline and the "
        "long job, not against one-thread workers."
    )
    return " ".join(parts)


WHY_MISSED: dict[str, Callable[[Report], str]] = {
    "longform": _why_longform,
    "scaleout": _why_scaleout,
    "batching": _why_batching,
}


def missed_section(found: Sequence[tuple[Bench, Report]]) -> list[str]:
    """Each missed target with its figures, and why, once per benchmark."""
    lines: list[str] = []
    for bench, report in found:
        missed = [row for row in rows_of(report) if row[2] and row[3] == "MISS"]
        if not missed:
            continue
        lines += [f"### {bench.title}", ""]
        lines += [f"- {figure}: {value}, target {target}." for figure, value, target, _ in missed]
        explain = WHY_MISSED.get(bench.name)
        lines += ["", explain(report) if explain else "No explanation is recorded for this miss yet.", ""]
    return ["## Where a target is missed, by how much and why", "", *lines] if lines else []


def machines_section(found: Sequence[tuple[Bench, Report]]) -> list[str]:
    by_machine: dict[str, list[str]] = {}
    for bench, report in found:
        by_machine.setdefault(machine_text(report), []).append(bench.name)
    if len(by_machine) == 1:
        return [f"All results below come from one machine: {next(iter(by_machine))}."]
    return [
        "The results below come from different machines, so compare them with care:",
        *(f"- {machine}: {', '.join(names)}" for machine, names in by_machine.items()),
    ]


def bench_section(bench: Bench, report: Report, img_dir: Path) -> list[str]:
    about, not_shown = script_notes(bench.name)
    lines = [
        f"## {bench.title}",
        "",
        f"- Machine: {machine_text(report)}",
        f"- Engine: {engine_text(report)}",
        f"- Settings: {settings_text(report)}",
        f"- Run: {when_text(report)} UTC, commit {report.get('commit', 'not recorded')} (`{bench.name}.py`)",
    ]
    problems = problem_lines(report)
    if problems:
        lines.append(f"- Server logs: {problems} warning or error line(s) during the run (see `{bench.name}.json`)")
    lines += ["", about] if about else []
    rows = [(a, b, c, shown_verdict(d)) for a, b, c, d in rows_of(report)]
    lines += ["", common.markdown_table(rows) if rows else "This result has no table of figures: rerun the benchmark."]
    if bench.plot is not None and bench.caption is not None:
        try:
            fig = bench.plot(report)
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
            lines += ["", f"(No plot: the result lacks what it needs: {type(exc).__name__} {exc}.)"]
        else:
            fig.savefig(img_dir / f"{bench.name}.png", dpi=120, metadata={"Software": None})
            source = f"{machine_text(report)}; {engine_text(report)}"
            lines += ["", f"![{bench.title}](img/{bench.name}.png)", "", f"*{bench.caption(report)} ({source}.)*"]
    if not_shown:
        lines += ["", f"**What it does not show:** {not_shown}"]
    return [*lines, ""]


def build(results: Path, out: Path) -> list[str]:
    """Writes the page and its plots; returns the names of the benchmarks that were not run."""
    img_dir = out / "img"
    img_dir.mkdir(parents=True, exist_ok=True)
    found: list[tuple[Bench, Report]] = []
    missing: list[Bench] = []
    for bench in BENCHES:
        report = load(results, bench.name)
        if report is None:
            missing.append(bench)
            (img_dir / f"{bench.name}.png").unlink(missing_ok=True)  # no stale plot of an older run
        else:
            found.append((bench, report))
    lines = [
        "# SayIt performance",
        "",
        "What SayIt adds to, and gains over, the bare Whisper engine, measured by the scripts in `bench/`. "
        "Every figure below names the machine, model and settings that produced it; each section ends with "
        "what its benchmark does not show.",
        "",
        "Every server in these benchmarks runs with the result cache off (`SAYIT_RESULT_CACHE=false`): the "
        "benchmarks send the same clips again and again, and each request must be transcribed, not answered "
        "from Redis.",
        "",
        "Regenerate with `make bench` (runs every benchmark, then this report), or rebuild this page from the "
        "last results (`docs/results/*.json`, each with the commit it measured) with `python bench/report.py`.",
        "",
        "## Summary of targets",
        "",
        *summary_section(found),
        "",
        *missed_section(found),
    ]
    gaps = [f"- {bench.title}: not run (no `{bench.name}.json` in the results)." for bench in missing]
    gaps += [f"- {bench.title}: its result has no table of figures; rerun it." for bench, r in found if "rows" not in r]
    lines += [*gaps, ""] if gaps else []
    lines += [*machines_section(found), ""]
    for bench, report in found:
        lines += bench_section(bench, report, img_dir)
    (out / "PERFORMANCE.md").write_text("\n".join(lines).rstrip() + "\n")
    return [bench.name for bench in missing]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=common.RESULTS, help="folder of the benchmarks' JSON")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for PERFORMANCE.md and img/")
    args = parser.parse_args(argv)
    missing = build(args.results, args.out)
    for name in missing:
        print(f"{name}: not run (no {name}.json in {args.results})")
    print(f"wrote {args.out / 'PERFORMANCE.md'} and its plots in {args.out / 'img'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
