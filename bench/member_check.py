"""Per-member check: one member's batched throughput inside Serve vs its runtime called in-process.

Same batch (64 windows), same framework threads (the builder's: one per whole CPU, at least
one), the YAML's member applications as `make serve` deploys them. In-process:
`runtime.predict(batch)` in a loop. In Serve: the driver keeps calls of that batch outstanding
against one member deployment and counts rows answered per second, along each path in PATHS.

The machine's speed moves by a third within seconds, so the ratio is taken in pairs: for each
member, ROUNDS rounds of the runtime in-process in the driver then each path in PAIRED, and the
median of each round's ratio. The runtime is also measured once before Ray starts, beside
nothing: a sample of the same noise, shown for comparison.
"""
from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from bench.apps.graph_args import yaml_args
from ensemble.config import GraphArgs, deployment_name, member_route

if TYPE_CHECKING:
    from ray.serve.handle import DeploymentHandle

    from ensemble.channel import DirectMember
    from models.runtimes.base import Runtime

BATCH = 64
# (label, transport, calls kept outstanding). Two: the replica always has the next call queued,
# so this is its capacity, not the round trip. Eight: calls queue while the model runs and the
# member's `serve.batch` merges them, as when several router replicas share a member.
# The direct channel shares memory with the replica, as the router on its node does; "TCP"
# sends the windows in the frames, as a router on another node does.
PATHS = (("handle", "handle", 2), ("HTTP", "http", 2), ("HTTP, 8 in flight", "http", 8),
         ("direct channel, TCP", "direct-tcp", 2), ("direct channel, TCP, 8 in flight", "direct-tcp", 8),
         ("direct channel", "direct", 2), ("direct channel, 8 in flight", "direct", 8))
PAIRED = ("direct channel", "direct channel, 8 in flight")  # the router's own transport
ROUNDS = 5


def _members(graph: str | None):
    """(model_root, model, version, framework threads) of each member's first version."""
    args = GraphArgs.model_validate(yaml_args(graph))
    for model, spec in args.members.items():
        version = next(iter(spec.versions))
        yield args.model_root, model, version, spec.versions[version].framework_threads


def _batch() -> np.ndarray:
    from models.data import sample_windows
    return sample_windows(BATCH, seed=11)


def _rate(calls: int, elapsed: float) -> dict[str, float]:
    return {"rows_per_s": calls * BATCH / elapsed, "calls": calls, "ms_per_call": 1000 * elapsed / max(calls, 1)}


def _runtime(root: str, model: str, version: str, threads: int) -> Runtime:
    from models.repository import load_runtime

    os.environ.update({k: str(threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")})
    return load_runtime(root, model, version, num_threads=threads)


def _in_process_rate(runtime: Runtime, batch: np.ndarray, seconds: float) -> dict[str, float]:
    runtime.predict(batch)
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        runtime.predict(batch)
        calls += 1
    return _rate(calls, time.perf_counter() - started)


def measure_in_process(graph: str | None, seconds: float) -> dict[str, dict[str, float]]:
    """Member -> rows/s of its runtime in this process (before Ray starts)."""
    batch = _batch()
    return {deployment_name(model, version): _in_process_rate(_runtime(root, model, version, threads), batch, seconds)
            for root, model, version, threads in _members(graph)}


def median_rate(rounds: list[dict[str, float]]) -> dict[str, Any]:
    """The median round's rate, with every round's rows/s."""
    rates = sorted(rounds, key=lambda rate: rate["rows_per_s"])
    return {**rates[len(rates) // 2], "rounds": [rate["rows_per_s"] for rate in rounds]}


def paired_ratios(beside: list[float], served: dict[str, list[float]]) -> dict[str, Any]:
    """Per path, the median of each round's served / in-process rows/s; the best path's."""
    medians = {path: statistics.median(s / b for s, b in zip(rates, beside)) for path, rates in served.items()}
    best = max(medians, key=medians.__getitem__)
    return {"path": best, "ratio": medians[best], "by_path": medians}


async def drive(call: Callable[[], Awaitable], seconds: float, in_flight: int) -> tuple[int, float]:
    """Keep `in_flight` calls outstanding for `seconds`; (calls answered, elapsed)."""
    calls = 0
    started = time.perf_counter()

    async def worker() -> None:
        nonlocal calls
        while time.perf_counter() - started < seconds:
            await call()
            calls += 1

    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return calls, time.perf_counter() - started


async def _no_fallback(windows: np.ndarray) -> np.ndarray:
    raise RuntimeError("the member's direct channel was not used")


def direct_member(handle: DeploymentHandle, same_node: bool = True) -> DirectMember:
    """The router's own `DirectMember` for `handle`'s deployment, here forbidden to fall back:
    a measurement of the channel must not quietly measure Serve's path. It shares memory with a
    replica on this node, as the router does; with `same_node` false it does as a caller on
    another node (windows in the frames)."""
    import ray

    from deployments.router import chosen_channel
    from ensemble.channel import DirectMember

    node_id = ray.get_runtime_context().get_node_id() if same_node else None
    return DirectMember(partial(chosen_channel, handle, node_id), fallback=_no_fallback)


def measure_in_serve(seconds: float, port: int, graph: str | None = None) -> dict[str, Any]:
    """Driven from this (the driver's) event loop: "serve", path label -> member -> rows/s (the
    median round's for PAIRED); "beside", member -> its runtime's rows/s in this process in the
    same rounds; "paired", member -> `paired_ratios`. HTTP calls go through Serve's ingress at
    `port` with the router's own client (`HttpMember`); direct calls over the replica's channel
    with the router's own `DirectMember`, which here may not fall back."""
    import aiohttp
    from ray import serve
    from ray.serve.context import _get_global_client

    from deployments.member_http import HttpMember

    batch = _batch()

    async def measure() -> dict[str, Any]:
        # Handles are made inside the loop: with RAY_SERVE_THROUGHPUT_OPTIMIZED their router runs on it.
        served: dict[str, dict[str, dict[str, Any]]] = {label: {} for label, _, _ in PATHS}
        beside: dict[str, dict[str, Any]] = {}
        paired: dict[str, dict[str, Any]] = {}
        async with aiohttp.ClientSession() as session:
            for root, model, version, threads in _members(graph):
                name = deployment_name(model, version)
                runtime = _runtime(root, model, version, threads)
                handle = serve.get_deployment_handle(name, app_name=name)
                member = HttpMember(session, f"http://127.0.0.1:{port}{member_route(model, version)}")
                direct, direct_tcp = direct_member(handle), direct_member(handle, same_node=False)
                calls = {"handle": lambda: handle.predict.remote(batch), "http": lambda: member.predict(batch),
                         "direct": lambda: direct.predict(batch), "direct-tcp": lambda: direct_tcp.predict(batch)}

                async def rate(transport: str, in_flight: int) -> dict[str, float]:
                    await calls[transport]()
                    return _rate(*await drive(calls[transport], seconds, in_flight))

                rounds: dict[str, list[dict[str, float]]] = {label: [] for label in ("in-process", *PAIRED)}
                for label, transport, in_flight in PATHS:
                    if label not in PAIRED:
                        served[label][name] = await rate(transport, in_flight)
                for _ in range(ROUNDS):
                    # Blocks this loop for `seconds`: nothing else of the measurement runs meanwhile.
                    rounds["in-process"].append(_in_process_rate(runtime, batch, seconds))
                    for label, transport, in_flight in PATHS:
                        if label in PAIRED:
                            rounds[label].append(await rate(transport, in_flight))
                for label in PAIRED:
                    served[label][name] = median_rate(rounds[label])
                beside[name] = median_rate(rounds["in-process"])
                paired[name] = paired_ratios(beside[name]["rounds"], {label: served[label][name]["rounds"]
                                                                      for label in PAIRED})
                direct.close()
                direct_tcp.close()
        # The handles' routers run on this loop, which closes on return: shut them down now, or
        # serve.shutdown() would try to on the closed loop (RuntimeError: Event loop is closed).
        await _get_global_client().shutdown_cached_handles_async()
        return {"serve": served, "beside": beside, "paired": paired}

    return asyncio.run(measure())
