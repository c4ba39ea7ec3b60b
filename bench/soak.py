"""Soak: the ensemble under steady load and feedback for minutes; memory, throughput and the state store over time.

    .venv/bin/python -m bench.soak [--minutes 10] [--window-s 30] [--connections 32] [--max-predictions 200000]

Serves the YAML graph under `make serve`'s settings in its own local Ray (`bench.servers`),
its state in a private SQLite file, with `ledger.max_predictions` lowered so that the
prediction log reaches its cap within the run (the default, a million, takes about seven
minutes at 2,400 req/s). Then, window after window until `--minutes` have passed: wrk at
`--connections` on POST /v1/predict for `--window-s`, while one client thread predicts with
request ids of its own at about `--labelled-per-s` windows a second and sends their labels a
few seconds later. After each window: requests/s, p50 and p99, answers other than 200;
the RSS of the router, the control plane, the members, HAProxy and the rest of the tree; the
state file's size; the predictions logged; labels sent and applied. Loopback only, bounded
in time; the server is stopped whatever happens. Results: bench/results/soak.json.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from collections import defaultdict, deque
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.apps.graph_args import graph_file
from bench.procmon import label, tree
from bench.servers import Server, predict_probe, ray_server
from bench.wrk import WrkRun, ensure_wrk, lua_script, make_bodies, run_wrk, threads_for

RESULTS = Path(__file__).resolve().parent / "results"
LABEL_DELAY_S = 2.0  # a label is sent this long after its prediction
ROLES = (("router", "EnsembleRouter"), ("control plane", "ControlPlane"), ("members", "ServeReplica:"),
         ("haproxy", "haproxy"))


def soak_graph(max_predictions: int, directory: Path, model_root: str | None = None) -> Path:
    """The YAML graph with the prediction log capped at `max_predictions`, its models from
    `model_root` if given."""
    return graph_file(directory / "soak.yaml", model_root, ledger={"max_predictions": max_predictions})


def rss_by_role(server: Server) -> dict[str, float]:
    """MiB of RSS per role in the server's process tree (members summed; the rest: Ray and the runner)."""
    mib: dict[str, float] = defaultdict(float)
    for proc in tree(server.pids()):
        try:
            rss = proc.memory_info().rss / 2**20
        except psutil.Error:
            continue
        name = label(proc)
        role = next((role for role, marker in ROLES if marker in name), "the rest")
        mib[role] += rss
    return {role: round(mib[role], 1) for role in (*(r for r, _ in ROLES), "the rest")}


class LabelledTraffic:
    """Predicts windows with its own request ids from a thread and labels them LABEL_DELAY_S later."""

    def __init__(self, url: str, bodies: list[bytes], per_s: float, batch: int = 5) -> None:
        self.url, self.per_s, self.batch = url, per_s, batch
        self.windows = [json.loads(body)["window"] for body in bodies]
        self.sent = self.applied = self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LabelledTraffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        waiting: deque[tuple[float, list[str]]] = deque()
        n, began = 0, time.monotonic()
        with httpx.Client(base_url=self.url, timeout=30) as client:
            # Paced from the start, not after each answer: the rate holds while answers take time.
            while not self._stop.wait(max(0.0, began + n / self.per_s - time.monotonic())):
                ids = [f"soak-{n + i}" for i in range(self.batch)]
                instances = [{"window": self.windows[(n + i) % len(self.windows)], "request_id": rid}
                             for i, rid in enumerate(ids)]
                n += self.batch
                try:
                    if client.post("/v1/predict", json={"instances": instances}).status_code == 200:
                        waiting.append((time.monotonic(), ids))
                    else:
                        self.failed += 1
                    due = []
                    while waiting and time.monotonic() - waiting[0][0] >= LABEL_DELAY_S:
                        due += waiting.popleft()[1]
                    if due:
                        items = [{"request_id": rid, "actual": 0.001 * (int(rid[5:]) % 7 - 3)} for rid in due]
                        response = client.post("/v1/feedback", json={"items": items})
                        self.sent += len(due)
                        if response.status_code == 200:
                            self.applied += response.json()["applied"]
                        else:
                            self.failed += 1
                except httpx.HTTPError:
                    self.failed += 1


def growth(windows: list[dict[str, Any]], role: str) -> dict[str, float]:
    """RSS of `role` after the first window and at the end, and its slope (MiB/min) over the
    second half of the run, where caches and pools have long filled."""
    points = [(w["at_s"] / 60, w["rss_mib"][role]) for w in windows]
    half = points[len(points) // 2:]
    slope = statistics.linear_regression(*zip(*half)).slope if len(half) >= 2 else 0.0
    return {"first_mib": points[0][1], "last_mib": points[-1][1], "max_mib": max(p[1] for p in points),
            "second_half_mib_per_min": round(slope, 2)}


def run(opts: argparse.Namespace) -> dict[str, Any]:
    wrk = ensure_wrk()
    bodies = make_bodies(4)
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        directory = Path(tmp)
        script = directory / "predict.lua"
        script.write_text(lua_script(bodies))
        server = ray_server("soak", "ensemble", directory / "logs", "throughput+haproxy",
                            ["--graph", str(soak_graph(opts.max_predictions, directory, opts.model_root))])
        server.env["BENCH_STATE_DIR"] = str(directory / "state")
        windows: list[dict[str, Any]] = []
        server.start()
        try:
            server.wait_ready(predict_probe(bodies[0]), 600)
            began = time.monotonic()
            with LabelledTraffic(server.url, bodies, opts.labelled_per_s) as labelled, \
                    httpx.Client(base_url=server.url, timeout=30) as client:
                while time.monotonic() - began < opts.minutes * 60:
                    load = run_wrk(WrkRun(server.url + "/v1/predict", opts.connections, opts.window_s,
                                          threads_for(opts.connections), script), wrk)
                    trust = client.get("/v1/trust").json()
                    windows.append({
                        "at_s": round(time.monotonic() - began, 1), "rps": round(load["rps"]),
                        "p50_ms": load["latency_ms"]["p50"], "p99_ms": load["latency_ms"]["p99"],
                        "non2xx": load["non2xx"], "socket_errors": sum(load["errors"].values()),
                        "rss_mib": rss_by_role(server),
                        "state_mib": round(sum(f.stat().st_size for f in (directory / "state").glob("*")) / 2**20, 1),
                        "predictions_logged": trust["predictions_logged"],
                        "labels_sent": labelled.sent, "labels_applied": labelled.applied,
                        "labelled_failures": labelled.failed,
                    })
                    print(json.dumps(windows[-1]), flush=True)
        finally:
            server.stop()
    return {"at": time.time(), "pids": sorted(server.known), "connections": opts.connections, "window_s": opts.window_s,
            "max_predictions": opts.max_predictions, "labelled_per_s": opts.labelled_per_s, "windows": windows,
            "growth": {role: growth(windows, role) for role in windows[0]["rss_mib"]} if windows else {}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="how long the load lasts")
    parser.add_argument("--window-s", type=float, default=30.0, help="seconds of each wrk window")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument("--max-predictions", type=int, default=200_000, help="the prediction log's cap for the run")
    parser.add_argument("--labelled-per-s", type=float, default=100.0, help="predictions a second that get labels")
    parser.add_argument("--model-root", help="the models' repository (default: the YAML's, model_repo)")
    parser.add_argument("--out", default=str(RESULTS / "soak.json"), help="where the results go")
    opts = parser.parse_args(argv)
    results = run(opts)
    Path(opts.out).parent.mkdir(parents=True, exist_ok=True)
    Path(opts.out).write_text(json.dumps(results, indent=1))
    for role, figures in results["growth"].items():
        print(f"{role}: {json.dumps(figures)}")


if __name__ == "__main__":
    main()
