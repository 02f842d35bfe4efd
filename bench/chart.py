"""Draws a benchmark result: throughput side by side, and the latency distribution."""

from __future__ import annotations

from pathlib import Path
from typing import Any

CHART = Path(__file__).parent / "chart.png"


def draw(result: dict[str, Any], path: Path = CHART) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars: list[tuple[str, float]] = [
        ("producer\nframes", result["produce_framed"]["ticks_per_s"]),
        ("producer\n1 tick/msg", result["produce_unframed"]["ticks_per_s"]),
        ("bare consumer\n(ceiling)", result["bare_consumer"]["ticks_per_s"]),
        ("fxstream\nagent", result["agent"]["ticks_per_s"]),
        ("fxstream\nend to end", result["end_to_end"]["ticks_per_s"]),
    ]
    if "quix" in result:
        bars += [("Quix\n1 tick/msg", result["quix"]["unframed"]["ticks_per_s"]),
                 ("Quix\nframes", result["quix"]["framed"]["ticks_per_s"])]
    if "oldstyle" in result:
        bars.append(("old: poll +\npandas", result["oldstyle"]["ticks_per_s"]))

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 5), gridspec_kw={"width_ratios": [3, 2]})
    names = [b[0] for b in bars]
    values = [b[1] / 1000 for b in bars]
    colors = ["#8da0cb" if "fxstream" not in n else "#1b9e77" for n in names]
    ax1.bar(names, values, color=colors)
    for x, v in enumerate(values):
        ax1.text(x, v, f"{v:,.0f}k", ha="center", va="bottom", fontsize=8)
    ax1.set_ylabel("thousand ticks / s")
    ax1.set_title(f"{result['ticks']:,} ticks, {result['symbols']} symbols, one run "
                  f"({result['when']})")
    ax1.tick_params(axis="x", labelsize=8)

    lat = result["latency"]
    edges = lat["histogram_edges_ms"]
    labels = [f"{int(e)}" for e in edges]
    ax2.bar(range(len(lat["histogram"])), lat["histogram"], color="#1b9e77")
    ax2.set_xticks(range(len(labels)), labels, rotation=45, fontsize=8)
    ax2.set_xlabel("ms from produce to the bar's row in PostgreSQL (bin start)")
    ax2.set_ylabel("ticks")
    ax2.set_title(f"latency at {lat['rate']:,.0f} ticks/s: p50 {lat['p50_ms']:.0f} ms, "
                  f"p99 {lat['p99_ms']:.0f} ms")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
