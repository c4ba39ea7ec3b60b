"""Serve's queue-length autoscaling, counting the calls that reach a replica over its channel.

Member replicas answer most calls over their direct channel (`ensemble.channel`), which Serve's
own count of ongoing requests never sees; each replica reports those calls as a custom metric
and this policy (`ensemble.config.AUTOSCALING_POLICY`) adds them. Serve still applies the deployment's bounds, delays and factors.
"""
from __future__ import annotations

from ray.serve.config import AutoscalingContext

CHANNEL_CALLS = "channel_calls_in_flight"


def ongoing_calls_policy(ctx: AutoscalingContext) -> tuple[float, dict]:
    """Replicas wanted: every ongoing call (Serve's requests plus channel calls) over the target."""
    if ctx.current_num_replicas == 0:
        return ctx.target_num_replicas, {}
    channel = sum((ctx.aggregated_metrics or {}).get(CHANNEL_CALLS, {}).values())
    return (ctx.total_num_requests + channel) / ctx.config.get_target_ongoing_requests(), {}
