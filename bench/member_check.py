"""Per-member check: one member's batched throughput inside Serve vs its runtime called in-process.

Same batch (64 windows), same framework threads (the builder's: one per whole CPU, at least
one), the very member deployments the project's builder binds for the YAML. In-process:
`runtime.predict(batch)` in a loop, measured before Ray starts so nothing else competes. In
Serve: the driver keeps `IN_FLIGHT` handle calls of that batch outstanding against the
member's deployment and counts rows answered per second.
"""
from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable

import numpy as np

from bench.apps.graph_args import bound_deployments, build, yaml_args
from ensemble.config import GraphArgs, deployment_name

BATCH = 64
IN_FLIGHT = 2  # so the replica always has the next call queued: its capacity, not the round trip


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


def build_app(graph: str | None = None):
    """The builder's member deployments, bound to a trivial ingress so serve.run deploys them alone."""
    from ray import serve

    bound = bound_deployments(build(yaml_args(graph), "member-check"))
    names = [deployment_name(model, version) for _, model, version, _ in _members(graph)]

    @serve.deployment(ray_actor_options={"num_cpus": 0.05})
    class Members:
        def __init__(self, members: dict) -> None:
            self.members = members

        async def __call__(self, request) -> dict:
            return {"members": list(self.members)}

    return Members.bind({name: bound[name] for name in names})


async def _drive(call: Callable[[], Awaitable], seconds: float) -> tuple[int, float]:
    """Keep IN_FLIGHT calls outstanding for `seconds`; (calls answered, elapsed)."""
    calls = 0
    started = time.perf_counter()

    async def worker() -> None:
        nonlocal calls
        while time.perf_counter() - started < seconds:
            await call()
            calls += 1

    await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
    return calls, time.perf_counter() - started


def measure_in_serve(seconds: float, graph: str | None = None, app_name: str = "bench") -> dict[str, dict[str, float]]:
    """Rows/s of each member deployment, driven from this (the driver's) event loop."""
    from ray import serve

    batch = _batch()

    async def measure() -> dict[str, dict[str, float]]:
        # Handles are made inside the loop: with RAY_SERVE_THROUGHPUT_OPTIMIZED their router runs on it.
        results = {}
        for _, model, version, _ in _members(graph):
            name = deployment_name(model, version)
            handle = serve.get_deployment_handle(name, app_name=app_name)
            await handle.predict.remote(batch)
            results[name] = _rate(*await _drive(lambda: handle.predict.remote(batch), seconds))
        return results

    return asyncio.run(measure())
