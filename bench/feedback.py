"""Batch feedback throughput end to end: labels per second from HTTP POST to durable acknowledgement.

    .venv/bin/python -m bench.feedback [--labels 100000] [--batch 10000] [--clients 1 2]

Starts one local Ray Serve with the default graph (its state in a private SQLite file), logs
`--labels` predictions through `POST /v1/predict` (batches of instances, not timed), then
times `POST /v1/feedback` batches of `--batch` labels from `--clients` concurrent clients.
Every label is joined with the five members' predictions, learned from and committed before
its request is answered, so labels/s is what a user gets. Loopback only; bounded by counts.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

from bench.apps.graph_args import yaml_args
from bench.servers import free_port

RESULTS = Path(__file__).resolve().parent / "results"
PREDICT_BATCH = 256


def log_predictions(url: str, ids: list[str], windows: np.ndarray) -> None:
    with httpx.Client(base_url=url, timeout=120) as client:
        for start in range(0, len(ids), PREDICT_BATCH):
            chunk = ids[start:start + PREDICT_BATCH]
            instances = [{"window": windows[i % len(windows)].tolist(), "request_id": rid}
                         for i, rid in enumerate(chunk)]
            client.post("/v1/predict", json={"instances": instances}).raise_for_status()


def post_feedback(url: str, batches: list[bytes]) -> list[float]:
    """Seconds per batch, in order; every label must be applied."""
    seconds = []
    with httpx.Client(base_url=url, timeout=120) as client:
        for body in batches:
            began = time.perf_counter()
            response = client.post("/v1/feedback", content=body, headers={"content-type": "application/json"})
            seconds.append(time.perf_counter() - began)
            response.raise_for_status()
            report = response.json()
            if report["applied"] != report["received"]:
                raise RuntimeError(f"not every label applied: {report}")
    return seconds


def measure(url: str, ids: list[str], batch: int, clients: int) -> dict[str, float]:
    rng = np.random.default_rng(clients)
    bodies = [json.dumps({"items": [{"request_id": rid, "actual": float(y)}
                                    for rid, y in zip(ids[s:s + batch], rng.normal(0, 0.01, batch))]}).encode()
              for s in range(0, len(ids), batch)]
    shares = [bodies[c::clients] for c in range(clients)]
    began = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        per_batch = [s for result in pool.map(lambda b: post_feedback(url, b), shares) for s in result]
    wall = time.perf_counter() - began
    return {"clients": clients, "labels": len(ids), "batch": batch, "wall_s": round(wall, 3),
            "labels_per_s": round(len(ids) / wall), "batch_p50_s": round(statistics.median(per_batch), 4),
            "batch_max_s": round(max(per_batch), 4)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labels", type=int, default=100_000, help="labels per measurement")
    parser.add_argument("--batch", type=int, default=10_000, help="labels per feedback request")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 2], help="concurrent feedback clients")
    opts = parser.parse_args(argv)

    import ray
    from ray import serve

    from ensemble.config import GraphArgs
    from graphs.ensemble import build_app
    from models.data import sample_windows

    windows = sample_windows(64, seed=3)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    results = []
    with tempfile.TemporaryDirectory() as state:
        args = {**yaml_args(), "state": {"url": f"sqlite:///{state}/feedback.db"}}
        ray.init(address="local", include_dashboard=False, log_to_driver=False)
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            serve.run(build_app(GraphArgs.model_validate(args)), name="ensemble", route_prefix="/")
            for clients in opts.clients:
                ids = [f"c{clients}-{i}" for i in range(opts.labels)]
                log_predictions(url, ids, windows)
                results.append(measure(url, ids, opts.batch, clients))
                print(json.dumps(results[-1]), flush=True)
        finally:
            serve.shutdown()
            ray.shutdown()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "feedback.json").write_text(json.dumps({"at": time.time(), "runs": results}, indent=2))


if __name__ == "__main__":
    main()
