"""What one call to a member costs: a Serve handle call, HTTP through Serve's ingress, the direct channel.

`python -m bench.call_cost [--rows N] [--seconds S] [--in-flight K]`, run with the ingress
settings to compare (`make serve`'s are `RAY_SERVE_ENABLE_HA_PROXY=1
RAY_SERVE_THROUGHPUT_OPTIMIZED=1`). One local Ray, one replica of xgboost v1 as the project
deploys a member application (`graphs.ensemble:build_member`, 0.2 CPU), reached three ways, in
turn, twice each, with K calls in flight (two by default) for S seconds: its `predict` method
through a `DeploymentHandle` (pickled numpy over Serve's gRPC); its `/members/xgboost-v1` route through Serve's ingress (`ensemble.wire`
bodies, aiohttp, keep-alive); and its direct channel (`ensemble.channel`, the replica chosen by
Serve's request router), sharing memory with the replica as the router on its node does
(`direct`) and with the windows in the frames as a router on another node does (`direct_tcp`).
CPU seconds of the caller, the replica and HAProxy are divided by the calls answered. Last,
what one replica choice by Serve's request router (`choose_replica`, pick-only) costs the
caller: DirectMember asks for one every 0.1 s, not per call.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import psutil
from ray import serve

from bench.member_check import direct_member, drive
from deployments.member_http import HttpMember
from deployments.router import chosen_channel
from ensemble.config import MemberAppArgs, deployment_name, member_route
from graphs.ensemble import build_member

REPO = Path(__file__).resolve().parents[1]
PORT = 8311
MODEL, VERSION = "xgboost", "v1"


def _cpu_seconds() -> dict[int, tuple[str, float]]:
    seconds = {}
    for proc in psutil.process_iter(["cmdline", "name"]):
        name = " ".join(proc.info["cmdline"] or []) or proc.info["name"]
        role = "caller" if proc.pid == os.getpid() else "replica" if "ServeReplica" in name else \
            "haproxy" if name.endswith("haproxy") or "/haproxy " in name else None
        if role:
            try:
                times = proc.cpu_times()
                seconds[proc.pid] = (role, times.user + times.system)
            except psutil.Error:
                pass
    return seconds


async def _measure(call: Callable[[], Awaitable], seconds: float, in_flight: int) -> dict[str, float]:
    for _ in range(30):  # warm the connection and the replica
        await call()
    before = _cpu_seconds()
    calls, elapsed = await drive(call, seconds, in_flight)
    after = _cpu_seconds()
    result = {"calls_per_s": round(calls / elapsed, 1), "ms_per_call": round(1000 * elapsed / calls, 3)}
    for pid, (role, cpu) in after.items():
        if pid in before:
            key = f"{role}_cpu_ms_per_call"
            result[key] = round(result.get(key, 0.0) + 1000 * (cpu - before[pid][1]) / calls, 3)
    return result


async def _compare(rows: int, seconds: float, in_flight: int) -> dict[str, list[dict[str, float]]]:
    import aiohttp

    from models.data import sample_windows

    windows = sample_windows(rows, seed=3).astype(np.float32)
    name = deployment_name(MODEL, VERSION)
    handle = serve.get_deployment_handle(name, app_name=name)
    results: dict[str, list[dict[str, float]]] = {"handle": [], "http": [], "direct": [], "direct_tcp": [],
                                                  "serve_choice": []}
    async with aiohttp.ClientSession() as session:
        member = HttpMember(session, f"http://127.0.0.1:{PORT}{member_route(MODEL, VERSION)}")  # the router's client
        direct, direct_tcp = direct_member(handle), direct_member(handle, same_node=False)
        for _ in range(2):
            results["handle"].append(await _measure(lambda: handle.predict.remote(windows), seconds, in_flight))
            results["http"].append(await _measure(lambda: member.predict(windows), seconds, in_flight))
            results["direct"].append(await _measure(lambda: direct.predict(windows), seconds, in_flight))
            results["direct_tcp"].append(await _measure(lambda: direct_tcp.predict(windows), seconds, in_flight))
            # What DirectMember saves by asking Serve for a replica every 0.1 s instead of per call.
            results["serve_choice"].append(await _measure(lambda: chosen_channel(handle, None), seconds, in_flight))
        direct.close()
        direct_tcp.close()
    # On this loop: the handle's router runs here under RAY_SERVE_THROUGHPUT_OPTIMIZED.
    await serve.shutdown_async()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1, help="windows per call")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--in-flight", type=int, default=2, help="calls kept outstanding")
    opts = parser.parse_args()

    import ray

    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": PORT})
        member = build_member(MemberAppArgs(model_root=str(REPO / "model_repo"), model=MODEL, version=VERSION,
                                            num_cpus=0.2))
        serve.run(member, name=deployment_name(MODEL, VERSION), route_prefix=member_route(MODEL, VERSION))
        results = asyncio.run(_compare(opts.rows, opts.seconds, opts.in_flight))
        env = {k: v for k, v in os.environ.items() if k.startswith("RAY_SERVE_")}
        print(json.dumps({"rows": opts.rows, "in_flight": opts.in_flight, "env": env, **results}, indent=1))
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
