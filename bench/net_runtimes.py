"""Torch eager against ONNX Runtime for each net, on the same trained weights, in-process.

`python -m bench.net_runtimes [--root model_repo] [--version v1]`: every net version ships its
torch state dict and its ONNX export (`models.train`), so both runtimes load the very weights
that are served, through `models.repository.load_runtime` (artifact check, warm-up), with one
framework thread, as a member replica with one CPU has. For each batch size the two runtimes
take turns for `--rounds` rounds of at least `--seconds` each; the table gives each one's median
CPU ms per call and the rows/s ratio. This is what decides which runtime serves the nets on CPU
(`models.train.FRAMEWORK`).
"""
from __future__ import annotations

import argparse
import time
from typing import TypedDict

import numpy as np

from models.data import sample_windows
from models.nets import NETS
from models.repository import Framework, load_runtime
from models.runtimes.base import Runtime

RUNTIMES: tuple[Framework, ...] = ("torch", "onnx")
BATCHES = (1, 16, 64, 256)


class Comparison(TypedDict):
    net: str  # <net>-<version>
    batch: int
    ms_per_call: dict[str, float]  # runtime -> median CPU ms per call
    rows_per_s: dict[str, float]  # runtime -> rows per CPU second


def cpu_ms_per_call(runtime: Runtime, windows: np.ndarray, seconds: float) -> float:
    calls, wall, cpu = 0, time.perf_counter(), time.process_time()
    while calls < 3 or time.perf_counter() - wall < seconds:
        runtime.predict(windows)
        calls += 1
    return 1000 * (time.process_time() - cpu) / calls


def compare(root: str, version: str, seconds: float, rounds: int) -> list[Comparison]:
    """One row per (net, batch): each runtime's median CPU ms per call and rows/s."""
    windows = sample_windows(max(BATCHES), seed=13)
    rows: list[Comparison] = []
    for net in sorted(NETS):
        loaded = {name: load_runtime(root, net, version, framework=name) for name in RUNTIMES}
        for batch in BATCHES:
            figures: dict[str, list[float]] = {name: [] for name in RUNTIMES}
            for _ in range(rounds):
                for name, runtime in loaded.items():
                    figures[name].append(cpu_ms_per_call(runtime, windows[:batch], seconds))
            medians = {name: float(np.median(values)) for name, values in figures.items()}
            rows.append({"net": f"{net}-{version}", "batch": batch, "ms_per_call": medians,
                         "rows_per_s": {name: 1000 * batch / ms for name, ms in medians.items()}})
    return rows


def table(rows: list[Comparison]) -> str:
    lines = ["| net | batch | torch eager ms/call | ONNX Runtime ms/call | torch rows/s | ONNX Runtime rows/s "
             "| ONNX Runtime / torch |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        ms, rate = row["ms_per_call"], row["rows_per_s"]
        lines.append(f"| {row['net']} | {row['batch']} | {ms['torch']:.3f} | {ms['onnx']:.3f} | {rate['torch']:,.0f} "
                     f"| {rate['onnx']:,.0f} | {rate['onnx'] / rate['torch']:.2f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="model_repo", help="model repository (make models)")
    parser.add_argument("--version", default="v1", help="version of every net to compare")
    parser.add_argument("--seconds", type=float, default=0.5, help="least time per runtime per round")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds; medians are reported")
    args = parser.parse_args(argv)
    print(table(compare(args.root, args.version, args.seconds, args.rounds)))


if __name__ == "__main__":
    main()
