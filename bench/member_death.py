"""What a member replica's death costs the answers: load on the YAML graph while a replica is killed.

    .venv/bin/python -m bench.member_death [--members xgboost-v1,nhits-v1] [--seconds 20] [--kill-at 5]
                                           [--connections 32]

Serves the YAML graph under `make serve`'s settings in its own local Ray (`bench.servers`).
For each member version in turn, once every answer is whole: wrk at `--connections` on POST
/v1/predict for `--seconds`, and `--kill-at` seconds in SIGKILL to that version's replica (its
pid from GET /v1/members), as a native crash or the kernel's OOM killer ends one. From the kill
on, a probe predicts ten times a second until an answer is whole again. Per member: requests/s,
p50, p99 and the slowest answer, answers by status, degraded answers, socket errors, seconds
from the kill to the first whole answer, and whether Serve's replacement has another pid.
Loopback only, bounded in time; the server is stopped whatever happens. Results:
bench/results/member_death.json.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bench.apps.graph_args import graph_file
from bench.servers import predict_probe, ray_server
from bench.wrk import WrkRun, ensure_wrk, lua_script, make_bodies, run_wrk, threads_for

RESULTS = Path(__file__).resolve().parent / "results"
PROBE_PERIOD_S = 0.1


def replica_pid(client: httpx.Client, deployment: str, timeout_s: float) -> int | None:
    """The pid of the replica that answers `deployment`'s info (`<model>-<version>`), asked until
    one does: after a replica's death Serve's own path reaches the new one a while after the
    router's channel does, and the router reports the version unavailable meanwhile."""
    model = deployment.rsplit("-", 1)[0]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for info in client.get("/v1/members").json()[model]["versions"].values():
            if info.get("deployment") == deployment:
                return info["pid"]
        time.sleep(PROBE_PERIOD_S)
    return None


class Recovery:
    """Kills `pid` at `kill_at_s`, then predicts every PROBE_PERIOD_S until an answer is whole."""

    def __init__(self, client: httpx.Client, body: bytes, pid: int, kill_at_s: float, timeout_s: float) -> None:
        self.client, self.body, self.pid = client, body, pid
        self.kill_at_s, self.timeout_s = kill_at_s, timeout_s
        self.killed_at: float | None = None
        self.whole_after_s: float | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Recovery:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._thread.join(self.kill_at_s + self.timeout_s + 30)

    def _run(self) -> None:
        time.sleep(self.kill_at_s)  # wrk started with the thread: this is when into its run the kill falls
        os.kill(self.pid, signal.SIGKILL)
        self.killed_at = time.monotonic()
        while time.monotonic() - self.killed_at < self.timeout_s:
            try:
                response = self.client.post("/v1/predict", content=self.body,
                                            headers={"content-type": "application/json"})
                if response.status_code == 200 and not response.json()["degraded"]:
                    self.whole_after_s = round(time.monotonic() - self.killed_at, 2)
                    return
            except httpx.HTTPError:
                pass
            time.sleep(PROBE_PERIOD_S)


def run(opts: argparse.Namespace) -> dict[str, Any]:
    wrk = ensure_wrk()
    bodies = make_bodies(4)
    deaths: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="member-death-") as tmp:
        directory = Path(tmp)
        script = directory / "predict.lua"
        script.write_text(lua_script(bodies))
        server = ray_server("member-death", "ensemble", directory / "logs", "throughput+haproxy",
                            ["--graph", str(graph_file(directory / "graph.yaml", opts.model_root))])
        server.env["BENCH_STATE_DIR"] = str(directory / "state")
        server.start()
        try:
            whole = predict_probe(bodies[0])
            with httpx.Client(base_url=server.url, timeout=30) as client:
                for deployment in opts.members.split(","):
                    server.wait_ready(whole, opts.recovery_timeout_s)  # every member answering again
                    pid = replica_pid(client, deployment, opts.recovery_timeout_s)
                    if pid is None:
                        raise RuntimeError(f"no replica of {deployment} reported its pid")
                    with Recovery(client, bodies[0], pid, opts.kill_at, opts.recovery_timeout_s) as recovery:
                        load = run_wrk(WrkRun(server.url + "/v1/predict", opts.connections, opts.seconds,
                                              threads_for(opts.connections), script), wrk)
                    deaths.append({
                        "member": deployment, "rps": round(load["rps"]), "p50_ms": load["latency_ms"]["p50"],
                        "p99_ms": load["latency_ms"]["p99"], "max_ms": load["latency_ms"]["max"],
                        "requests": load["requests"], "statuses": load["statuses"], "degraded": load["marked"],
                        "socket_errors": load["socket_errors"], "whole_again_after_s": recovery.whole_after_s,
                        "replaced": replica_pid(client, deployment, opts.recovery_timeout_s) not in (None, pid),
                    })
                    print(json.dumps(deaths[-1]), flush=True)
        finally:
            server.stop()
    return {"at": time.time(), "pids": sorted(server.known), "connections": opts.connections,
            "seconds": opts.seconds, "kill_at_s": opts.kill_at, "deaths": deaths}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", default="xgboost-v1,nhits-v1", help="member versions to kill, in turn")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds of wrk per member")
    parser.add_argument("--kill-at", type=float, default=5.0, help="seconds into wrk's run of the kill")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument("--recovery-timeout-s", type=float, default=120.0,
                        help="longest wait for whole answers after a kill")
    parser.add_argument("--model-root", help="the models' repository (default: the YAML's, model_repo)")
    parser.add_argument("--out", default=str(RESULTS / "member_death.json"), help="where the results go")
    opts = parser.parse_args(argv)
    results = run(opts)
    Path(opts.out).parent.mkdir(parents=True, exist_ok=True)
    Path(opts.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
