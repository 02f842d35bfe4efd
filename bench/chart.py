"""Draws a benchmark result: throughput side by side, the latency distribution over its
runs, scale-out (a backlog drained and ticks produced while the workers run) and failover."""

from __future__ import annotations

from pathlib import Path
from typing import Any

CHART = Path(__file__).parent / "chart.png"


def draw(result: dict[str, Any], path: Path = CHART) -> Path:
    """One panel per measured part; a part the run left out (``--skip``) has none."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [p for p, present in (
        (_throughput, "agent" in result or "quix" in result),
        (_latency, "latency" in result),
        (_scale, "scale" in result or "scale_backlog" in result),
        (_failover, bool(result.get("failover"))),
    ) if present]
    if not panels:
        panels = [_nothing]
    cols = 2 if len(panels) > 1 else 1
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(7 * cols, 5 * rows), squeeze=False)
    flat = list(axes.flat)
    for panel, ax in zip(panels, flat, strict=False):
        panel(ax, result)
    for ax in flat[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _nothing(ax: Any, result: dict[str, Any]) -> None:
    ax.axis("off")
    ax.set_title(f"no measurement ({result['when']})")


def _throughput(ax: Any, result: dict[str, Any]) -> None:
    bars: list[tuple[str, float]] = []
    if "produce_framed" in result:
        bars += [("producer\nframes", result["produce_framed"]["ticks_per_s"]),
                 ("producer\n1 tick/msg", result["produce_unframed"]["ticks_per_s"])]
    if "agent" in result:
        bars += [("bare consumer\n(ceiling)", result["bare_consumer"]["ticks_per_s"]),
                 ("fxstream\nagent", result["agent"]["ticks_per_s"]),
                 ("fxstream\nend to end", result["end_to_end"]["ticks_per_s"])]
    if "quix" in result:
        bars += [("Quix\n1 tick/msg", result["quix"]["unframed"]["ticks_per_s"]),
                 ("Quix\nframes", result["quix"]["framed"]["ticks_per_s"])]
    if "oldstyle" in result:
        bars.append(("old: poll +\npandas", result["oldstyle"]["ticks_per_s"]))
    names = [b[0] for b in bars]
    values = [b[1] / 1000 for b in bars]
    colors = ["#8da0cb" if "fxstream" not in n else "#1b9e77" for n in names]
    ax.bar(names, values, color=colors)
    for x, v in enumerate(values):
        ax.text(x, v, f"{v:,.0f}k", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("thousand ticks / s")
    ax.set_title(f"{result['ticks']:,} ticks, {result['symbols']} symbols, one run "
                 f"({result['when']})", fontsize=10)
    ax.tick_params(axis="x", labelsize=7)


def _latency(ax: Any, result: dict[str, Any]) -> None:
    lat = result["latency"]
    edges = lat["histogram_edges_ms"]
    labels = [f"{int(e)}" for e in edges]
    ax.bar(range(len(lat["histogram"])), lat["histogram"], color="#1b9e77")
    ax.set_xticks(range(len(labels)), labels, rotation=45, fontsize=8)
    ax.set_xlabel("ms from produce to the bar's row in PostgreSQL (bin start)")
    ax.set_ylabel("ticks")
    runs = lat.get("runs")
    if not runs:  # a result from before several runs
        ax.set_title(f"latency at {lat['rate']:,.0f} ticks/s: p50 {lat['p50_ms']:.0f} ms, "
                     f"p99 {lat['p99_ms']:.0f} ms", fontsize=10)
        return
    ax.set_title(f"latency at {lat['rate']:,.0f} ticks/s, {len(runs)} runs of "
                 f"{lat['duration_s']:.0f} s: p50 {lat['p50_min_ms']:.0f}-"
                 f"{lat['p50_max_ms']:.0f} ms, p99 {lat['p99_min_ms']:.0f}-"
                 f"{lat['p99_max_ms']:.0f} ms", fontsize=10)
    text = "\n".join(f"run {i + 1}: p50 {r['p50_ms']:.0f}, p99 {r['p99_ms']:.0f} ms"
                     for i, r in enumerate(runs))
    ax.text(0.98, 0.97, text, transform=ax.transAxes, ha="right", va="top", fontsize=8,
            family="monospace")


def _scale(ax: Any, result: dict[str, Any]) -> None:
    backlog = {r["workers"]: r for r in result.get("scale_backlog", [])}
    live = {r["workers"]: r for r in result.get("scale", []) if r["partitions"] == 12}
    counts = sorted(set(backlog) | set(live))
    series = [
        ("backlog, launch to lag 0", "#1b9e77",
         [backlog[n]["drain_ticks_per_s"] if n in backlog else 0 for n in counts]),
        ("backlog, first to last message", "#66c2a5",
         [backlog[n]["ticks_per_s"] if n in backlog else 0 for n in counts]),
        ("produced while the workers run", "#8da0cb",
         [live[n]["ticks_per_s"] if n in live else 0 for n in counts]),
    ]
    width = 0.8 / len(series)
    for i, (label, color, values) in enumerate(series):
        xs = [x + (i - 1) * width for x in range(len(counts))]
        ax.bar(xs, [v / 1000 for v in values], width, label=label, color=color)
        for x, v in zip(xs, values, strict=True):
            if v:
                ax.text(x, v / 1000, f"{v / 1000:,.0f}k", ha="center", va="bottom", fontsize=7)
    for x, n in enumerate(counts):
        if n in backlog:
            ax.text(x - width, 0, f"{backlog[n]['drain_s']:.1f} s\nto drain", ha="center",
                    va="bottom", fontsize=7, color="white")
    ax.set_xticks(range(len(counts)), [f"{n} worker{'s' if n > 1 else ''}" for n in counts])
    ax.set_ylabel("thousand ticks / s")
    sizes = [f"backlog of {next(iter(backlog.values()))['ticks_produced']:,} ticks"
             ] if backlog else []
    sizes += [f"{next(iter(live.values()))['ticks']:,} ticks produced while running"
              ] if live else []
    ax.set_title(f"scale-out, 12 partitions: {', '.join(sizes)}", fontsize=10)
    ax.legend(fontsize=8)


def _failover(ax: Any, result: dict[str, Any]) -> None:
    runs = result["failover"]
    series = [("broker evicts the dead worker", "evicted_s", "#bdbdbd"),
              ("survivor ready", "survivor_ready_s", "#8da0cb"),
              ("its symbols' bars move: median", "recovery_median_s", "#66c2a5"),
              ("... and the last symbol", "recovery_max_s", "#1b9e77")]
    width = 0.8 / len(series)
    for i, (label, key, color) in enumerate(series):
        xs = [x + (i - 1.5) * width for x in range(len(runs))]
        values = [r.get(key) or 0 for r in runs]
        ax.bar(xs, values, width, label=label, color=color)
        for x, v in zip(xs, values, strict=True):
            ax.text(x, v, f"{v:.1f}", ha="center", va="bottom", fontsize=7)
    for x, r in enumerate(runs):
        ax.hlines(r["session_timeout_s"], x - 0.45, x + 0.45, colors="#d95f02",
                  linestyles="dashed", label="session timeout" if x == 0 else None)
    ax.set_xticks(range(len(runs)), [f"session timeout {r['session_timeout_s']:g} s\n"
                                     f"{r['killed_symbols']} symbols on "
                                     f"{len(r['killed_partitions'])} partitions"
                                     for r in runs], fontsize=8)
    ax.set_ylabel("seconds after kill -9 of one of two workers")
    ax.set_title(f"failover at {runs[0]['rate']:,.0f} ticks/s", fontsize=10)
    ax.legend(fontsize=8)
