"""Per-member check: one member's batched throughput inside Serve vs its runtime called in-process.

Same batch (64 windows), same framework threads (the builder's: one per whole CPU, at least
one), the YAML's member applications as `make serve` deploys them. In-process:
`runtime.predict(batch)` in a loop, measured before Ray starts so nothing else competes. In
Serve: the driver keeps calls of that batch outstanding against one member deployment and
counts rows answered per second, along each path in PATHS.
"""
from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING

import numpy as np

from bench.apps.graph_args import yaml_args
from ensemble.config import GraphArgs, deployment_name, member_route

if TYPE_CHECKING:
    from ray.serve.handle import DeploymentHandle

    from ensemble.channel import DirectMember

BATCH = 64
# (label, transport, calls kept outstanding). Two: the replica always has the next call queued,
# so this is its capacity, not the round trip. Eight: calls queue while the model runs and the
# member's `serve.batch` merges them, as when several router replicas share a member.
PATHS = (("handle", "handle", 2), ("HTTP", "http", 2), ("HTTP, 8 in flight", "http", 8),
         ("direct channel", "direct", 2), ("direct channel, 8 in flight", "direct", 8))


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


def measure_in_process(graph: str | None, seconds: float) -> dict[str, dict[str, float]]:
    from models.repository import load_runtime

    batch = _batch()
    results = {}
    for root, model, version, threads in _members(graph):
        os.environ.update({k: str(threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")})
        runtime = load_runtime(root, model, version, num_threads=threads)
        runtime.predict(batch)
        calls, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            runtime.predict(batch)
            calls += 1
        results[deployment_name(model, version)] = _rate(calls, time.perf_counter() - started)
    return results


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


def direct_member(handle: DeploymentHandle) -> DirectMember:
    """The router's own `DirectMember` for `handle`'s deployment, here forbidden to fall back:
    a measurement of the channel must not quietly measure Serve's path."""
    from deployments.router import chosen_channel
    from ensemble.channel import DirectMember

    return DirectMember(partial(chosen_channel, handle), fallback=_no_fallback)


def measure_in_serve(seconds: float, port: int, graph: str | None = None) -> dict[str, dict[str, dict[str, float]]]:
    """Path label -> member -> rows/s, driven from this (the driver's) event loop. HTTP calls go
    through Serve's ingress at `port` with the router's own client (`HttpMember`); direct calls
    over the replica's channel with the router's own `DirectMember`, which here may not fall back."""
    import aiohttp
    from ray import serve
    from ray.serve.context import _get_global_client

    from deployments.member_http import HttpMember

    batch = _batch()

    async def measure() -> dict[str, dict[str, dict[str, float]]]:
        # Handles are made inside the loop: with RAY_SERVE_THROUGHPUT_OPTIMIZED their router runs on it.
        results: dict[str, dict[str, dict[str, float]]] = {label: {} for label, _, _ in PATHS}
        async with aiohttp.ClientSession() as session:
            for _, model, version, _ in _members(graph):
                name = deployment_name(model, version)
                handle = serve.get_deployment_handle(name, app_name=name)
                member = HttpMember(session, f"http://127.0.0.1:{port}{member_route(model, version)}")
                direct = direct_member(handle)
                calls = {"handle": lambda: handle.predict.remote(batch), "http": lambda: member.predict(batch),
                         "direct": lambda: direct.predict(batch)}
                for label, transport, in_flight in PATHS:
                    await calls[transport]()
                    results[label][name] = _rate(*await drive(calls[transport], seconds, in_flight))
                direct.close()
        # The handles' routers run on this loop, which closes on return: shut them down now, or
        # serve.shutdown() would try to on the closed loop (RuntimeError: Event loop is closed).
        await _get_global_client().shutdown_cached_handles_async()
        return results

    return asyncio.run(measure())
