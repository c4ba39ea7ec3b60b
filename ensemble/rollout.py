"""Metric-gated canary rollouts between two versions of one member, as Flagger and Argo Rollouts do.

No Ray and no storage here. A `Rollout` moves a member's traffic from its stable version to a
canary in steps (5 → 25 → 50 → 100 %). At each step it waits at least `interval_s` and until
the canary has served `min_requests` and been scored on `min_labels`, then runs the gates:
the canary's feedback MSE at most the stable version's × (1 + tolerance), its error rate at
most the stable's plus a margin, and its p99 latency under its limit. Passing every gate advances a step (after the last one the
canary is promoted); the first failing gate rolls the canary back to 0 %. Error rate and
latency are also checked as soon as `min_requests` are in, so a broken canary does not wait for
labels. Its whole state is a plain dict, so the control plane persists it and a restart
resumes the rollout where it was.
"""
from __future__ import annotations

import bisect
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from pydantic import Field, model_validator

from ensemble.strict import StrictModel

Status = Literal["progressing", "paused", "promoted", "rolled_back"]
ACTIVE: tuple[Status, ...] = ("progressing", "paused")
# Upper bounds (seconds) of the latency histogram: 0.5 ms to ~16 s, 15% apart. Histograms
# merge by adding counts, so router replicas can ship them and the p99 stays comparable.
LATENCY_BOUNDS = tuple(0.0005 * 1.15**i for i in range(75))


class RolloutPlan(StrictModel):
    """How a canary version takes over a member's traffic, and the gates it must pass."""

    canary: str = Field(description="The version rolled out; it must be deployed.")
    steps: list[float] = Field(
        [5.0, 25.0, 50.0, 100.0],
        description="Canary traffic percentages, increasing, at least one below 100 and the last 100; passing the last step promotes.",
    )
    interval_s: float = Field(60.0, gt=0, description="Least seconds each step lasts before its gates are judged.")
    min_requests: int = Field(100, ge=1, description="Canary requests a step needs before it is judged.")
    min_labels: int = Field(100, ge=1, description="Feedback labels each version needs in a step before it is judged.")
    error_tolerance: float = Field(
        0.1, ge=0, description="Gate: canary feedback MSE <= stable MSE x (1 + error_tolerance)."
    )
    max_error_rate: float = Field(
        0.01, ge=0, le=1,
        description="Gate: share of canary calls that fail or time out (rows it gives no prediction for, non-finite "
        "or out of its bounds, count as failed), beyond the stable version's share in the same step (once the "
        "stable has served min_requests in it). Windows that every version fails on, such as values far beyond "
        "the training data's, then do not roll a canary back.",
    )
    max_p99_latency_s: float = Field(
        0.5, ge=LATENCY_BOUNDS[0], le=LATENCY_BOUNDS[-1],
        description="Gate: p99 seconds of the canary's calls; within the latency histogram's range (0.5 ms to "
        "15.5 s), as a p99 outside it cannot be read.",
    )

    @model_validator(mode="after")
    def _steps(self) -> RolloutPlan:
        if any(not 0 < s <= 100 for s in self.steps) or any(a >= b for a, b in zip(self.steps, self.steps[1:])):
            raise ValueError("steps must be increasing percentages in (0, 100]")
        if not self.steps or self.steps[-1] != 100:
            raise ValueError("the last step must be 100 (the canary takes all traffic before promotion)")
        if len(self.steps) < 2:  # at 100% from the start the stable version serves nothing to compare
            raise ValueError("steps need one below 100 first: the MSE gate compares the canary with the stable "
                             "version serving beside it")
        return self


@dataclass
class VersionWindow:
    """What one version did during a step: calls, failures, latency histogram, feedback error."""

    requests: int = 0
    errors: int = 0
    labels: int = 0
    squared_error: float = 0.0
    latency: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BOUNDS) + 1))

    def add_calls(self, requests: int, errors: int, latency: list[int]) -> None:
        self.requests += requests
        self.errors += errors
        self.latency = [a + b for a, b in zip(self.latency, latency)]

    def add_label(self, residual: float) -> None:
        self.labels += 1
        self.squared_error += residual * residual

    @property
    def mse(self) -> float | None:
        return self.squared_error / self.labels if self.labels else None

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    @property
    def p99_s(self) -> float | None:
        """Upper bound of the bucket holding the 99th percentile of answered calls."""
        total = sum(self.latency)
        if not total:
            return None
        running = 0
        for bucket, count in enumerate(self.latency):
            running += count
            if running >= 0.99 * total:
                return LATENCY_BOUNDS[bucket] if bucket < len(LATENCY_BOUNDS) else float("inf")
        return float("inf")

    def summary(self) -> dict[str, float | int | None]:
        return {"requests": self.requests, "errors": self.errors, "error_rate": self.error_rate,
                "p99_latency_s": self.p99_s, "labels": self.labels, "mse": self.mse}


def latency_bucket(seconds: float) -> int:
    return bisect.bisect_left(LATENCY_BOUNDS, seconds)


@dataclass
class Transition:
    """One recorded change of a rollout: kind (started, advanced, paused, ...), why, and the numbers."""

    kind: str
    reason: str
    detail: dict[str, Any]


@dataclass
class Rollout:
    member: str
    stable: str
    plan: RolloutPlan
    started_at: float
    status: Status = "progressing"
    step: int = 0
    step_started_at: float = 0.0
    reason: str = "started"
    canary_window: VersionWindow = field(default_factory=VersionWindow)
    stable_window: VersionWindow = field(default_factory=VersionWindow)

    def __post_init__(self) -> None:
        self.step_started_at = self.step_started_at or self.started_at

    @property
    def canary(self) -> str:
        return self.plan.canary

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    @property
    def canary_share(self) -> float:
        if self.status == "promoted":
            return 1.0
        if self.status == "rolled_back":
            return 0.0
        return self.plan.steps[self.step] / 100.0

    def split(self, versions: list[str]) -> dict[str, float]:
        """The member's traffic split this rollout imposes (versions outside it get 0)."""
        share = self.canary_share
        split = dict.fromkeys(versions, 0.0)
        split[self.stable] = 1.0 - share
        split[self.canary] = share
        return split

    def observe_calls(self, version: str, requests: int, errors: int, latency: list[int]) -> None:
        window = self._window(version)
        if window is not None:
            window.add_calls(requests, errors, latency)

    def observe_label(self, version: str, residual: float) -> None:
        window = self._window(version)
        if window is not None:
            window.add_label(residual)

    def _window(self, version: str) -> VersionWindow | None:
        if self.status != "progressing":
            return None
        return {self.canary: self.canary_window, self.stable: self.stable_window}.get(version)

    def evaluate(self, now: float) -> Transition | None:
        """Judge the current step; a Transition when the rollout advances, promotes or rolls back."""
        if self.status != "progressing":
            return None
        plan, canary, stable = self.plan, self.canary_window, self.stable_window
        if canary.requests >= plan.min_requests:
            # The stable's rate is the reference only on as much evidence as the canary's.
            stable_rate = stable.error_rate if stable.requests >= plan.min_requests else 0.0
            if canary.error_rate is not None and canary.error_rate - stable_rate > plan.max_error_rate:
                return self._end("rolled_back", now, f"canary error rate {canary.error_rate:.4f} > stable's "
                                                     f"{stable_rate:.4f} + {plan.max_error_rate}")
            if canary.p99_s is not None and canary.p99_s > plan.max_p99_latency_s:
                return self._end("rolled_back", now, f"canary p99 latency {canary.p99_s:.4f}s > {plan.max_p99_latency_s}s")
        waiting = []
        if now - self.step_started_at < plan.interval_s:
            waiting.append(f"{plan.interval_s - (now - self.step_started_at):.1f}s of the step interval")
        if canary.requests < plan.min_requests:
            waiting.append(f"canary requests {canary.requests}/{plan.min_requests}")
        if canary.labels < plan.min_labels:
            waiting.append(f"canary labels {canary.labels}/{plan.min_labels}")
        if stable.labels < plan.min_labels:
            waiting.append(f"stable labels {stable.labels}/{plan.min_labels}")
        if waiting:
            self.reason = "waiting for " + ", ".join(waiting)
            return None
        limit = stable.mse * (1.0 + plan.error_tolerance)
        if canary.mse > limit:
            return self._end("rolled_back", now, f"canary MSE {canary.mse:.6g} > stable {stable.mse:.6g} x "
                                                 f"{1 + plan.error_tolerance:g}")
        gates = (f"MSE {canary.mse:.6g} <= {limit:.6g}, error rate {canary.error_rate:.4f}, "
                 f"p99 {canary.p99_s:.4f}s")
        if self.step + 1 == len(plan.steps):
            return self._end("promoted", now, f"every step passed; last: {gates}")
        detail = self._detail()
        self.step += 1
        self.step_started_at = now
        self.canary_window = VersionWindow()
        if self.canary_share < 1.0:
            self.stable_window = VersionWindow()  # else the last window with stable traffic stays the reference
        self.reason = f"step {self.step} ({plan.steps[self.step]:g}%): gates passed: {gates}"
        return Transition("advanced", self.reason, {**detail, "to_percent": plan.steps[self.step]})

    def pause(self, now: float, reason: str = "paused by hand") -> Transition:
        self._require_active()
        self.status, self.reason = "paused", reason
        return Transition("paused", reason, self._detail())

    def resume(self, now: float, reason: str = "resumed by hand") -> Transition:
        if self.status != "paused":
            raise ValueError(f"rollout of {self.member} is {self.status}, not paused")
        self.status, self.reason, self.step_started_at = "progressing", reason, now
        return Transition("resumed", reason, self._detail())

    def promote(self, now: float, reason: str = "promoted by hand") -> Transition:
        self._require_active()
        return self._end("promoted", now, reason)

    def rollback(self, now: float, reason: str = "rolled back by hand") -> Transition:
        self._require_active()
        return self._end("rolled_back", now, reason)

    def _require_active(self) -> None:
        if not self.active:
            raise ValueError(f"rollout of {self.member} has ended ({self.status})")

    def _end(self, status: Status, now: float, reason: str) -> Transition:
        detail = self._detail()
        self.status, self.reason, self.step_started_at = status, reason, now
        return Transition(status, reason, detail)

    def _detail(self) -> dict[str, Any]:
        return {"step": self.step, "percent": self.plan.steps[self.step], "canary": self.canary_window.summary(),
                "stable": self.stable_window.summary()}

    def report(self) -> dict[str, Any]:
        return {"member": self.member, "stable": self.stable, "canary": self.canary, "status": self.status,
                "step": self.step, "canary_percent": 100.0 * self.canary_share, "reason": self.reason,
                "started_at": self.started_at, "step_started_at": self.step_started_at,
                "plan": self.plan.model_dump(), **self._detail()}

    def state(self) -> dict[str, Any]:
        """Everything, as JSON-ready data (see `from_state`)."""
        state = asdict(self)
        state["plan"] = self.plan.model_dump()
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Rollout:
        return cls(**{**state, "plan": RolloutPlan.model_validate(state["plan"]),
                      "canary_window": VersionWindow(**state["canary_window"]),
                      "stable_window": VersionWindow(**state["stable_window"])})


class CallStats:
    """A router's per-version call counts and latencies since it last shipped them to the control plane."""

    def __init__(self) -> None:
        self._windows: dict[str, VersionWindow] = {}

    def add(self, name: str, requests: int, failed: bool, latency_s: float) -> None:
        window = self._windows.get(name)
        if window is None:  # not setdefault: that would build a window, its histogram too, per call
            window = self._windows[name] = VersionWindow()
        window.requests += requests
        window.errors += requests if failed else 0
        window.latency[latency_bucket(latency_s)] += requests

    def drain(self) -> dict[str, dict[str, Any]]:
        """Deployment name -> {requests, errors, latency histogram}; starts afresh."""
        windows, self._windows = self._windows, {}
        return {name: {"requests": w.requests, "errors": w.errors, "latency": w.latency} for name, w in windows.items()}
