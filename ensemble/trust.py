"""Learned trust: per-member error statistics, trust policies and drift flags.

No Ray and no storage here: `TrustBook` takes joined labels (what each member version
predicted, and what really happened) and keeps everything needed to weight the members and
flag drift. Its whole state is a plain dict, so the control plane can persist it in the same
transaction as the feedback that produced it and restore exactly the same weights.

Losses are squared errors divided by a running scale of the labels' variance, so the
learning rate means the same thing whatever the units of the target.
"""
from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Literal

from pydantic import Field

from ensemble.strict import StrictModel

PolicyName = Literal["static", "hedge", "inverse_error"]


class DriftSpec(StrictModel):
    """When a member's recent error counts as drift."""

    baseline: Literal["manifest", "first_labels"] = Field(
        "manifest", description="Baseline error: the holdout MSE in the manifest, or the MSE of the first `baseline_labels`."
    )
    baseline_labels: int = Field(200, ge=10, description="Labels that make the baseline when `baseline` is first_labels.")
    window: int = Field(500, ge=10, description="Labels in the rolling error (exponential half-life of window/2).")
    min_labels: int = Field(100, ge=1, description="Labels a member needs before it can be flagged.")
    error_ratio: float = Field(1.05, gt=1, description="Flag when rolling MSE / baseline MSE exceeds this.")
    bias_z: float = Field(4.0, gt=0, description="Flag when the mean residual is this many standard errors from 0.")


class TrustSpec(StrictModel):
    """How the router learns whom to trust from feedback."""

    policy: PolicyName = Field("hedge", description="static: the priors; hedge: multiplicative weights; inverse_error: 1/recent MSE.")
    learning_rate: float = Field(0.05, gt=0, description="Hedge's eta: weight ∝ prior·exp(-eta·discounted normalised loss).")
    discount: float = Field(0.99, gt=0, le=1, description="Per-label decay of past losses; < 1 lets a recovered member earn trust back.")
    floor: float = Field(0.01, ge=0, lt=1, description="Least share of the average weight any member keeps (so it can come back).")
    error_window: int = Field(200, ge=2, description="Labels in inverse_error's recent MSE (exponential half-life of window/2).")
    drift: DriftSpec = Field(default_factory=DriftSpec, description="Drift detection.")


@functools.cache  # asked for each label
def _decay(window: int) -> float:
    """Per-label decay of an exponential average whose half-life is window/2 labels."""
    return 0.5 ** (2.0 / window)


@dataclass
class MemberStats:
    """Everything learned about one member version (JSON-serialisable)."""

    labels: int = 0
    discounted_loss: float = 0.0  # hedge's cumulative normalised loss, decayed
    recent_mse: float = 0.0  # inverse_error's exponential average (bias-corrected by recent_norm)
    recent_norm: float = 0.0
    rolling_mse: float = 0.0  # drift's exponential averages over the drift window
    rolling_residual: float = 0.0
    rolling_residual_sq: float = 0.0
    rolling_norm: float = 0.0
    baseline_sum: float = 0.0  # squared errors of the first labels
    baseline_mse: float | None = None

    def recent(self) -> float | None:
        return self.recent_mse / self.recent_norm if self.recent_norm else None

    def rolling(self) -> tuple[float, float, float] | None:
        """(mse, mean residual, residual variance) over the drift window."""
        if not self.rolling_norm:
            return None
        mse = self.rolling_mse / self.rolling_norm
        mean = self.rolling_residual / self.rolling_norm
        return mse, mean, max(self.rolling_residual_sq / self.rolling_norm - mean * mean, 0.0)


# A label or residual counts at most this many of the labels' standard deviations away: one
# wrong label (a price sent for a return) would otherwise blow the running variance up for good,
# every later loss would round to 0, and hedge would stop learning. Until OUTLIER_AFTER labels
# have set the scale, the median and MAD of the labels so far estimate it (the first ROBUST_FROM
# are learned from together, under the bound all of them give); the scale is then built again
# from those first labels, each bounded that way, so a wrong one among them leaves no trace in it.
OUTLIER_SIGMAS, OUTLIER_AFTER, ROBUST_FROM = 10.0, 30, 5
MAD_TO_SIGMA = 1.4826  # a normal distribution's standard deviation per median absolute deviation
# The least MSE or residual variance counted, as a share of the labels' variance: a member exactly
# right, or off by exactly a constant, then gets a finite weight and bias figure.
VARIANCE_FLOOR = 1e-6


@dataclass
class LabelScale:
    """Running mean and variance of the labels: the unit of the normalised loss."""

    count: float = 0.0
    mean: float = 0.0
    m2: float = 0.0
    first: list[float] = field(default_factory=list)  # the labels as sent, until OUTLIER_AFTER

    def center_and_bound(self) -> tuple[float, float]:
        """Where the next label is expected, and how far from it (or from a prediction) it counts."""
        if self.count >= OUTLIER_AFTER:
            return self.mean, OUTLIER_SIGMAS * math.sqrt(self.variance)
        return _median_bound(self.first)

    def add(self, actual: float, center: float, bound: float) -> None:
        """Count `actual`, as at most `bound` from `center`."""
        warming = self.count < OUTLIER_AFTER
        self._add(_clip(actual, center, bound))
        if not warming:
            return
        if len(self.first) == self.count - 1:  # else a state from before `first` was kept
            self.first.append(actual)
        if self.count == OUTLIER_AFTER:
            first, self.first = self.first, []
            if len(first) == self.count:
                self.count = self.mean = self.m2 = 0.0
                center, bound = _median_bound(first)
                for label in first:
                    self._add(_clip(label, center, bound))

    def _add(self, actual: float) -> None:
        self.count += 1
        delta = actual - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (actual - self.mean)

    @property
    def variance(self) -> float:
        return self.m2 / self.count if self.count > 1 and self.m2 > 0 else 1.0


def _median_bound(labels: list[float]) -> tuple[float, float]:
    """The labels' median, and the bound their median absolute deviation gives (inf with fewer
    than ROBUST_FROM, or where all are equal). Where most are equal (returns of exactly 0 in a
    quiet market) that deviation is 0: the labels that differ from the median give it instead,
    so that one wrong label among them is still bounded."""
    if len(labels) < ROBUST_FROM:
        return 0.0, math.inf
    median = statistics.median(labels)
    deviations = [abs(x - median) for x in labels]
    mad = statistics.median(deviations)
    if mad == 0:
        mad = statistics.median(d for d in deviations if d > 0) if any(deviations) else 0.0
    return median, OUTLIER_SIGMAS * MAD_TO_SIGMA * mad if mad > 0 else math.inf


def _clip(value: float, center: float, bound: float) -> float:
    return min(max(value, center - bound), center + bound)


@dataclass
class TrustBook:
    """Trust state of every member version, updated label by label."""

    spec: TrustSpec
    priors: dict[str, float]  # deployment name -> prior weight
    baselines: dict[str, float] = field(default_factory=dict)  # deployment name -> manifest holdout MSE
    stats: dict[str, MemberStats] = field(default_factory=dict)
    scale: LabelScale = field(default_factory=LabelScale)
    # The very first labels, learned from only once ROBUST_FROM are in, each bounded by all of
    # them: before that nothing bounds a label, and one wrong one would stay in every member's errors.
    held: list[tuple[dict[str, float], float]] = field(default_factory=list)

    def residual_bound(self) -> float:
        """How far from its prediction the next label counts at most, as trust learns it (no
        bound until the first ROBUST_FROM labels are in)."""
        return self.scale.center_and_bound()[1] if self.scale.count else math.inf

    def update(self, joined: Iterable[tuple[Mapping[str, float], float]]) -> int:
        """Apply labels: each is (member version -> its prediction, actual). Returns how many."""
        count = 0
        for member in self.priors:  # a deployed newcomer starts at the mean before these labels
            self._stats_of(member)
        for predictions, actual in joined:
            count += 1
            if self.scale.count == 0 and len(self.held) < ROBUST_FROM - 1:
                self.held.append((dict(predictions), actual))
            elif self.held:
                first, self.held = [*self.held, (predictions, actual)], []
                center, bound = _median_bound([label for _, label in first])
                for held_predictions, held_actual in first:
                    self._learn(held_predictions, held_actual, center, bound)
            else:
                self._learn(predictions, actual, *self.scale.center_and_bound())
        return count

    def _learn(self, predictions: Mapping[str, float], actual: float, center: float, bound: float) -> None:
        """One label, at most `bound` from `center`, and each residual at most `bound`."""
        recent_decay = _decay(self.spec.error_window)
        drift_decay = _decay(self.spec.drift.window)
        self.scale.add(actual, center, bound)
        variance = self.scale.variance
        total_loss = 0.0
        for member in predictions.keys() - self.stats.keys():  # a shadow or retired version, seen first
            self._stats_of(member)
        for member, predicted in predictions.items():
            stats = self.stats[member]
            residual = _clip(actual - predicted, 0.0, bound)
            squared = residual * residual
            loss = min(squared / variance, 100.0)
            total_loss += loss
            stats.labels += 1
            stats.discounted_loss = self.spec.discount * stats.discounted_loss + loss
            stats.recent_mse = recent_decay * stats.recent_mse + squared
            stats.recent_norm = recent_decay * stats.recent_norm + 1.0
            stats.rolling_mse = drift_decay * stats.rolling_mse + squared
            stats.rolling_residual = drift_decay * stats.rolling_residual + residual
            stats.rolling_residual_sq = drift_decay * stats.rolling_residual_sq + squared
            stats.rolling_norm = drift_decay * stats.rolling_norm + 1.0
            if stats.labels <= self.spec.drift.baseline_labels:
                stats.baseline_sum += squared
                if stats.labels == self.spec.drift.baseline_labels:
                    stats.baseline_mse = stats.baseline_sum / stats.labels
        # Sleeping experts: a version that did not predict this label (another version of its
        # member served it, or a shadow not sampled) is charged the mean loss of those that
        # did, so it neither gains trust by being absent nor starts unproven ahead of the rest.
        if predictions:
            imputed = total_loss / len(predictions)
            for member in self.priors.keys() - predictions.keys():
                stats = self.stats[member]
                stats.discounted_loss = self.spec.discount * stats.discounted_loss + imputed

    def weights(self, members: Iterable[str] | None = None) -> dict[str, float]:
        """Unnormalised weights per member version (the combiner normalises over who answered)."""
        names = list(members) if members is not None else list(self.priors)
        if self.spec.policy == "static":
            return {m: self.priors.get(m, 1.0) for m in names}
        if self.spec.policy == "hedge":
            newcomer = self._mean_discounted_loss()
            losses = {m: self.stats[m].discounted_loss if m in self.stats else newcomer for m in names}
            least = min(losses.values(), default=0.0)
            raw = {m: self.priors.get(m, 1.0) * math.exp(-self.spec.learning_rate * (losses[m] - least)) for m in names}
        else:
            # Each MSE in units of the labels' variance: the same proportions, and finite however
            # small the labels' unit (at 1e-160 the floor itself underflowed and 1/MSE was inf).
            variance = self.scale.variance
            raw = {}
            for m in names:
                recent = self.stats[m].recent() if m in self.stats else None
                relative = recent / variance if recent is not None else 1.0
                raw[m] = self.priors.get(m, 1.0) / max(relative, VARIANCE_FLOOR)
        return self._floored(raw)

    def _mean_discounted_loss(self) -> float:
        """Over the deployed versions with a history: a retired one's loss no longer decays."""
        known = [stats.discounted_loss for member, stats in self.stats.items() if member in self.priors]
        return sum(known) / len(known) if known else 0.0

    def _stats_of(self, member: str) -> MemberStats:
        """A version's statistics; one first seen (deployed after others learned) starts at the
        mean discounted loss of those known, so hedge puts it neither ahead nor behind: at 0 it
        would outweigh every member with a history (exp(-eta * their loss)) for hundreds of labels."""
        if member not in self.stats:
            self.stats[member] = MemberStats(discounted_loss=self._mean_discounted_loss())
        return self.stats[member]

    def _floored(self, raw: dict[str, float]) -> dict[str, float]:
        """Normalised shares where none is below floor/N; the rest share what remains in proportion."""
        total = sum(raw.values())
        if not raw or total <= 0:
            return raw
        least = self.spec.floor / len(raw)
        floored: set[str] = set()
        while True:
            free = {m: w for m, w in raw.items() if m not in floored}
            mass = 1.0 - least * len(floored)
            free_total = sum(free.values())
            shares = {m: mass * w / free_total for m, w in free.items()}
            low = {m for m, s in shares.items() if s < least}
            if not low:
                return {**shares, **{m: least for m in floored}}
            floored |= low

    def drift(self, member: str) -> dict[str, float | bool | str | None]:
        """The drift flag of one member version and the numbers behind it."""
        spec = self.spec.drift
        stats = self.stats.get(member, MemberStats())
        baseline = stats.baseline_mse if spec.baseline == "first_labels" else self.baselines.get(member)
        rolling = stats.rolling()
        report: dict[str, float | bool | str | None] = {
            "labels": stats.labels, "baseline_mse": baseline, "rolling_mse": None, "ratio": None,
            "mean_residual": None, "bias_z": None, "drift": False, "reason": None,
        }
        if rolling is None:
            return report
        mse, mean, variance = rolling
        effective = min(stats.labels, spec.window)
        z = mean / math.sqrt(max(variance, self.scale.variance * VARIANCE_FLOOR) / effective)
        ratio = mse / baseline if baseline else None
        report.update(rolling_mse=mse, ratio=ratio, mean_residual=mean, bias_z=z)
        if stats.labels >= spec.min_labels:
            if ratio is not None and ratio > spec.error_ratio:
                report.update(drift=True, reason=f"rolling MSE {ratio:.3f}x baseline (> {spec.error_ratio})")
            elif abs(z) > spec.bias_z:
                report.update(drift=True, reason=f"mean residual {mean:.3g} is {z:.1f} standard errors from 0")
        return report

    def state(self) -> dict:
        """Everything learned, as JSON-ready data. What only the first labels need is left out once
        they are learned from, so a release from before them still reads the state."""
        scale = asdict(self.scale)
        if not scale["first"]:
            del scale["first"]
        state = {"stats": {m: asdict(s) for m, s in self.stats.items()}, "scale": scale}
        if self.held:
            state["held"] = [[predictions, actual] for predictions, actual in self.held]
        return state

    def restore(self, state: Mapping) -> None:
        self.stats = {m: MemberStats(**s) for m, s in state.get("stats", {}).items()}
        self.scale = LabelScale(**state.get("scale", {}))
        self.held = [(dict(predictions), actual) for predictions, actual in state.get("held", [])]
