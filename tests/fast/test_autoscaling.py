"""Member autoscaling: the queue-length rule counting channel calls, or CPU, whichever wants more."""
from __future__ import annotations

import importlib
from types import SimpleNamespace

from deployments.autoscaling import CPU_BUSY, UNSEEN_IN_FLIGHT, CpuMeter
from ensemble.config import AUTOSCALING_POLICY, AutoscalingSpec


def policy(target_cpu_fraction: float = 0.8):
    # As Serve builds it from the deployment's config: the class at the import path, with its kwargs.
    module, name = AUTOSCALING_POLICY.split(":")
    return getattr(importlib.import_module(module), name)(target_cpu_fraction=target_cpu_fraction)


def context(replicas: int, requests: float, metrics: dict | None, target: float = 2.0) -> SimpleNamespace:
    return SimpleNamespace(current_num_replicas=replicas, target_num_replicas=replicas, total_num_requests=requests,
                           aggregated_metrics=metrics, config=SimpleNamespace(get_target_ongoing_requests=lambda: target))


def test_channel_calls_count_with_serves_requests():
    assert policy()(context(2, 1.0, {UNSEEN_IN_FLIGHT: {"a": 3.5, "b": 3.5}})) == (4.0, {})
    assert policy()(context(2, 1.0, None)) == (0.5, {})


def test_a_busy_replica_asks_for_another_though_it_has_one_call_in_flight():
    # One router keeps one call on the replica at a time: by calls it wants half a replica.
    busy = context(1, 0.0, {UNSEEN_IN_FLIGHT: {"a": 1.0}, CPU_BUSY: {"a": 0.95}}, target=2.0)
    wanted, _ = policy(0.8)(busy)
    assert wanted > 1
    idle = context(2, 0.0, {UNSEEN_IN_FLIGHT: {"a": 0.2, "b": 0.2}, CPU_BUSY: {"a": 0.1, "b": 0.1}}, target=2.0)
    assert policy(0.8)(idle)[0] < 1


def test_the_config_hands_serve_the_policy_and_its_target():
    config = AutoscalingSpec(max_replicas=3, target_cpu_fraction=0.6).to_serve()
    assert config["policy"] == {"policy_function": AUTOSCALING_POLICY, "policy_kwargs": {"target_cpu_fraction": 0.6}}
    assert "target_cpu_fraction" not in config and config["max_replicas"] == 3


def test_the_cpu_meter_reads_the_share_of_its_threads_time_on_cpu_since_the_last_reading():
    now, used = [100.0], [5.0]
    meter = CpuMeter(threads=2, clock=lambda: now[0], cpu=lambda: used[0])
    now[0], used[0] = 110.0, 15.0  # 10 CPU seconds in 10 s on two threads
    assert meter.busy() == 0.5
    now[0], used[0] = 112.0, 15.0
    assert meter.busy() == 0.0
    assert meter.busy() == 0.0  # no time passed
