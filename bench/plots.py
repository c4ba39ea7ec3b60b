"""PNG plots of one result file: throughput against connections, and latency CDFs."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.report import SYSTEMS, connection_counts, main_rows, runs_of


def draw(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write throughput.png, settings.png and latency_cdf_<c>.png into `out_dir`; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    runs = results["runs"]
    rows = main_rows(runs)
    counts = connection_counts(runs)
    written = []

    fig, ax = plt.subplots(figsize=(8, 5))
    for system, label in SYSTEMS.items():
        points = sorted((p["connections"], p["rps"]) for s, _, p in rows if s == system)
        if points:
            ax.plot(*zip(*points), marker="o", label=label)
    ax.set(xscale="log", xlabel="connections (wrk, loopback)", ylabel="requests/s",
           title="Throughput against connections (ensemble's best ingress setting)")
    ax.set_xticks(counts, [str(c) for c in counts])
    ax.grid(alpha=0.3)
    ax.legend()
    written.append(_save(fig, out_dir / "throughput.png"))

    fig, ax = plt.subplots(figsize=(8, 5))
    for system in ("noop", "naive", "ensemble"):
        for run in runs_of(runs, system):
            points = sorted((p["connections"], p["rps"]) for p in run["points"])
            ax.plot(*zip(*points), marker="o", label=f"{system} [{run['settings']}]")
    ax.set(xscale="log", yscale="log", xlabel="connections", ylabel="requests/s",
           title="Ray Serve ingress settings")
    ax.set_xticks(counts, [str(c) for c in counts])
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    written.append(_save(fig, out_dir / "settings.png"))

    for connections in counts:
        fig, ax = plt.subplots(figsize=(8, 5))
        for system, _, p in rows:
            if p["connections"] == connections and p["cdf_ms"]:
                ax.plot(*cdf(p), marker=".", label=SYSTEMS[system])
        deadline = next((p for p in (results.get("deadline") or {}).get("points", []) if p["connections"] == connections),
                        None)
        if deadline and deadline["cdf_ms"]:
            ax.plot(*cdf(deadline), linestyle="--", label="ensemble, one member stalled, 25 ms deadline")
        ax.set(xscale="log", xlabel="latency ms (log)", ylabel="fraction of requests",
               title=f"Latency CDF at {connections} connection(s)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
        written.append(_save(fig, out_dir / f"latency_cdf_{connections}.png"))
    return written


def cdf(point: dict[str, Any]) -> tuple[list[float], list[float]]:
    """(latency ms, fraction) of a point; wrk's 100th percentile is unreliable, its max is the top."""
    pairs = [(v, q / 100) for q, v in point["cdf_ms"] if q < 100]
    if point.get("max_ms") is not None:
        pairs.append((point["max_ms"], 1.0))
    return [v for v, _ in pairs], [q for _, q in pairs]


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
