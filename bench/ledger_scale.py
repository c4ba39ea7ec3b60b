"""What a full prediction log costs the control plane: its start, its memory, and joining labels.

`python -m bench.ledger_scale [--rows N] [--labels L] [--rounds R]`: a private SQLite store
holding N predictions of five members (`bench.store_prune`), then the seconds and resident memory
a `Ledger` over it takes to start (as the control plane does on a restart: in a fresh process,
its modules imported first), and R rounds of one feedback batch of L labels for predictions
picked at random among the N, each batch's labels removed again before the next round so that
every one joins.
"""
from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from sqlalchemy import delete

from bench.store_prune import MEMBERS, filled_store
from ensemble.ledger import Ledger, LedgerSpec
from ensemble.store import StateStore, labels
from ensemble.trust import TrustBook, TrustSpec


def measure(path: Path, rows: int, labels_per_batch: int, rounds: int) -> None:
    process = psutil.Process()
    rss = process.memory_info().rss
    began = time.perf_counter()
    ledger = Ledger(StateStore(f"sqlite:///{path}"), TrustBook(TrustSpec(), dict.fromkeys(MEMBERS, 1.0)),
                    LedgerSpec(max_predictions=rows))
    print(f"start: {time.perf_counter() - began:.2f} s, resident memory +{(process.memory_info().rss - rss) / 2**20:.0f} "
          f"MiB, {len(ledger):,} predictions logged")
    seconds = []
    for round_ in range(rounds):
        ids = [f"r{i}" for i in random.Random(round_).sample(range(rows), labels_per_batch)]
        with ledger.store.engine.begin() as conn:  # the store holds a label for every prediction
            conn.execute(delete(labels).where(labels.c.request_id.in_(ids)))
        began = time.perf_counter()
        report = ledger.feedback([(rid, 1.0) for rid in ids])
        seconds.append(time.perf_counter() - began)
        if report.applied != labels_per_batch:
            raise RuntimeError(f"not every label joined: {vars(report)}")
    median = statistics.median(seconds)
    print(f"feedback of {labels_per_batch:,} labels: median {median * 1000:.0f} ms "
          f"({', '.join(f'{s * 1000:.0f}' for s in seconds)}), {labels_per_batch / median:,.0f} labels/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--labels", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--store", help=argparse.SUPPRESS)  # the measuring process: the store is filled
    args = parser.parse_args()
    if args.store:
        measure(Path(args.store), args.rows, args.labels, args.rounds)
        return
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "state.db"
        filled_store(path, args.rows, time.time() - 3600)  # every prediction within the log's age
        subprocess.run([sys.executable, "-m", "bench.ledger_scale", "--store", str(path), "--rows", str(args.rows),
                        "--labels", str(args.labels), "--rounds", str(args.rounds)], check=True, timeout=600)


if __name__ == "__main__":
    main()
