"""What the control plane's housekeeping tick costs the state store once its tables are full.

`python -m bench.store_prune [--rows N] [--rounds R]`: a private SQLite store holding N
predictions of five members and N labels (half unknown), then R rounds of the tick's prune with
its count caps and with its age limits alone, alternating. The tick blocks the control plane's
event loop while it runs, every second (`deployments/control.py`).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from ensemble.store import StateStore

MEMBERS = {f"member{i}-v1": 0.1 * i for i in range(5)}  # as many as graphs/ensemble.yaml
CHUNK = 50_000


def filled_store(path: Path, rows: int, start: float) -> StateStore:
    store = StateStore(f"sqlite:///{path}")
    for first in range(0, rows, CHUNK):
        ids = range(first, min(first + CHUNK, rows))
        store.log_predictions([(f"r{i}", start + i / 1000, MEMBERS) for i in ids])
        store.save_labels([(f"r{i}", 1.0, start + i / 1000, "applied" if i % 2 else "unknown") for i in ids], {}, {})
    return store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    start = 1e9
    with tempfile.TemporaryDirectory() as directory:
        store = filled_store(Path(directory) / "state.db", args.rows, start)
        seconds: dict[str, list[float]] = {"ages and counts": [], "ages only": []}
        for _ in range(args.rounds):
            for name, keep in (("ages and counts", args.rows), ("ages only", None)):
                began = time.perf_counter()
                store.prune(start - 1, 0.0, keep)  # nothing old enough to go: the steady state
                seconds[name].append(time.perf_counter() - began)
    for name, values in seconds.items():
        print(f"{name}: median {statistics.median(values) * 1000:.2f} ms per tick "
              f"({', '.join(f'{v * 1000:.2f}' for v in values)})")


if __name__ == "__main__":
    main()
