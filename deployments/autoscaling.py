"""Autoscaling of member versions: Serve's queue-length rule counting channel calls, or CPU.

Member replicas answer most calls over their direct channel (`ensemble.channel`), and router
replicas most predict requests ahead of Serve's replica wrapper (`deployments.http_callback`),
neither of which Serve's own count of ongoing requests sees; each replica reports them as a
custom metric, which the policy adds to Serve's count.
But a router keeps at most `max_in_flight` calls on each replica, so that count stays near one
per router replica however busy the member is, and cannot ask for more replicas on its own. So
each replica also reports how busy its framework threads are on the CPU (not waiting for one,
as wall time would count on a crowded machine), and the policy
(`ensemble.config.AUTOSCALING_POLICY`) asks for whichever is more: every ongoing call over
`target_ongoing_requests`, or the CPU the replicas use over `target_cpu_fraction`. Serve still
applies the deployment's bounds, delays and factors.
"""
from __future__ import annotations

import time
from collections.abc import Callable

from ray.serve.config import AutoscalingContext

UNSEEN_IN_FLIGHT = "in_flight_unseen_by_serve"  # channel calls (members), predicts (routers)
CPU_BUSY = "framework_cpu_busy"


class CpuMeter:
    """The share of its framework threads' time a process spent on the CPU between readings."""

    def __init__(self, threads: int, clock: Callable[[], float] = time.monotonic,
                 cpu: Callable[[], float] = time.process_time) -> None:
        self._threads, self._clock, self._cpu = threads, clock, cpu
        self._since, self._used = clock(), cpu()

    def busy(self) -> float:
        now, used = self._clock(), self._cpu()
        elapsed = now - self._since
        share = (used - self._used) / (elapsed * self._threads) if elapsed > 0 else 0.0
        self._since, self._used = now, used
        return share


class MemberLoadPolicy:
    """Replicas wanted: the more of the queue-length rule and the CPU rule."""

    def __init__(self, target_cpu_fraction: float) -> None:
        self.target_cpu_fraction = target_cpu_fraction

    def __call__(self, ctx: AutoscalingContext) -> tuple[float, dict]:
        if ctx.current_num_replicas == 0:
            return ctx.target_num_replicas, {}
        metrics = ctx.aggregated_metrics or {}
        calls = ctx.total_num_requests + sum(metrics.get(UNSEEN_IN_FLIGHT, {}).values())
        by_calls = calls / ctx.config.get_target_ongoing_requests()
        by_cpu = sum(metrics.get(CPU_BUSY, {}).values()) / self.target_cpu_fraction
        return max(by_calls, by_cpu), {}
