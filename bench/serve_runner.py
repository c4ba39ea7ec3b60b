"""Starts one local Ray session with one Serve application on a loopback port, then waits.

Run by the harness as its own process group: `python -m bench.serve_runner --app noop --port N
--ready-file F`. It writes F (JSON) once `serve.run` has returned and shuts Serve and Ray down
on SIGTERM/SIGINT. The `member-check` app instead measures and writes its results to F.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any


def build(app: str, graph: str | None, members: int, port: int,
          gpu_share: float | None) -> list[tuple[str, str | None, Any]]:
    """The Serve applications of `app` as (name, route prefix, application), in deploy order;
    the one served at `/` is what the load hits (imports only what that app needs)."""
    if app == "noop":
        from bench.apps.noop import build_app
        return [("bench", "/", build_app())]
    if app == "naive":
        from bench.apps.naive import build_app
        return [("bench", "/", build_app(graph))]
    from bench.apps import ensemble_apps
    if app == "member-check":
        from bench.apps.graph_args import yaml_args
        return ensemble_apps.member_applications(yaml_args(graph))
    if app == "ensemble":
        return ensemble_apps.ensemble_apps(port, graph)
    if app == "members":
        return ensemble_apps.members_apps(members, port, graph)
    if app == "deadline":
        return ensemble_apps.deadline_apps(port, graph=graph)
    if app == "gpu":
        return ensemble_apps.gpu_apps(port, gpu_share, graph)
    raise SystemExit(f"unknown app {app!r}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--app", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ready-file", required=True)
    parser.add_argument("--graph", default=None)
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--temp-dir", default=None)
    parser.add_argument("--gpu-share", type=float, help="gpu: the GPUs each net replica asks for")
    parser.add_argument("--gpus", type=float, default=None,
                        help="GPUs declared to Ray instead of those it detects (to try the GPU graph without one)")
    parser.add_argument("--seconds", type=float, default=4.0, help="member-check: seconds per measurement")
    opts = parser.parse_args(argv)

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    if opts.app == "member-check":  # the runtime in-process once before Ray starts, while nothing else runs
        from bench.member_check import measure_in_process
        inproc = measure_in_process(opts.graph, opts.seconds)

    import ray
    from ray import serve

    # Replicas import bench.* too: the harness puts the repository on PYTHONPATH, which the
    # raylet and so every worker inherit.
    ray.init(address="local", include_dashboard=False, log_to_driver=False, _temp_dir=opts.temp_dir,
             num_gpus=opts.gpus)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": opts.port})
        apps = build(opts.app, opts.graph, opts.members, opts.port, opts.gpu_share)
        started = time.monotonic()
        for name, route_prefix, app in apps:
            serve.run(app, name=name, route_prefix=route_prefix)
        info = {"pid": os.getpid(), "app": opts.app, "deploy_s": round(time.monotonic() - started, 2),
                "env": {k: v for k, v in os.environ.items() if k.startswith("RAY_SERVE_")},
                "ray_resources": ray.cluster_resources(), "metrics_port": ray.nodes()[0]["MetricsExportPort"]}
        if opts.app == "member-check":
            from bench.member_check import measure_in_serve
            info["member_check"] = {"in_process": inproc, **measure_in_serve(opts.seconds, opts.port, opts.graph)}
        Path(opts.ready_file).write_text(json.dumps(info))
        while not stop.wait(0.5):
            pass
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
