"""The prediction log and feedback join: labels that arrive later meet what each member said.

No Ray: the control-plane deployment owns one `Ledger` and the routers send it their
predictions and the labels they receive, so feedback may reach any router replica.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol

from pydantic import Field

from ensemble.strict import StrictModel
from ensemble.store import StateStore
from ensemble.trust import TrustBook

PredictionRow = tuple[str, float, dict[str, float]]  # request_id, created_at, member version -> prediction
Joined = tuple[dict[str, float], float]  # what each member version predicted, what really happened
TRUST_DOCUMENT = "trust"
TOTALS_DOCUMENT = "feedback_totals"
CLOCK_SKEW_S = 3600.0  # how far a router's clock may run ahead of the control plane's
# Capping the log and the unknown labels by count scans both tables (41 ms at a million rows
# each): once a minute, so each holds at most a minute's rows beyond its cap.
COUNT_CAP_EVERY_S = 60.0
# The newest predictions, kept in memory as well as in the store: labels that follow them closely
# and the shadow outputs that follow them join without a read. Older ones are read from the store
# when their labels come, so the log's size costs the control plane disk, not memory or start time.
CACHED_PREDICTIONS = 20_000
# Shadow outputs kept for a request whose own prediction has not been logged yet: a shadow is
# mirrored before the fan-out and may answer, and be shipped, first. The oldest go beyond this.
EARLY_SHADOWS = 10_000


class LedgerSpec(StrictModel):
    """Bounds of the prediction log and the feedback join."""

    max_predictions: int = Field(
        1_000_000, ge=100,
        description="Most predictions kept in the state store for joining late labels (enforced once a minute); "
        "the labels of those dropped go an hour later.",
    )
    max_age_s: float = Field(7 * 24 * 3600, gt=0, description="Seconds a prediction stays joinable.")
    join_grace_s: float = Field(
        5.0, ge=0, description="Seconds a label for a not-yet-logged request waits for its prediction before it counts as unknown."
    )
    max_feedback_items: int = Field(10_000, ge=1, description="Most labels accepted in one feedback request.")


@dataclass
class FeedbackReport:
    received: int = 0
    applied: int = 0
    duplicate: int = 0
    pending: int = 0
    unknown: int = 0

    def add(self, other: FeedbackReport) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


class LabelObserver(Protocol):
    """Learns from joined labels besides trust (the rollouts' gates), with its state as documents."""

    def observe_labels(self, joined: list[Joined], bound: float) -> None:
        """`joined` labels, each residual counted at most `bound` away, as trust counts it."""

    def documents(self) -> dict[str, Any]: ...

    def restore(self, documents: Mapping[str, Any]) -> None: ...


class Ledger:
    def __init__(self, store: StateStore, trust: TrustBook, spec: LedgerSpec,
                 clock: Callable[[], float] = time.time, observer: LabelObserver | None = None,
                 cached: int = CACHED_PREDICTIONS) -> None:
        """`observer` sees every batch of joined labels after trust has learned from it; its
        documents are saved in the same transaction as the labels, which count as applied once
        saved: on a restart neither trust nor the observer has lost what a label taught it, nor
        learns from it twice. Where that transaction fails, memory goes back to what was saved,
        so the caller may send the same labels again."""
        self.store, self.trust, self.spec, self.clock, self.observer = store, trust, spec, clock, observer
        documents = store.get_documents()
        if TRUST_DOCUMENT in documents:
            trust.restore(documents[TRUST_DOCUMENT])
        now = clock()
        self._cached = min(cached, spec.max_predictions)
        self._recent: OrderedDict[str, tuple[float, dict[str, float]]] = OrderedDict(
            (rid, (created, members))
            for rid, created, members in store.recent_predictions(now - spec.max_age_s, self._cached)
        )
        self._logged = store.count_predictions()
        self._pending: dict[str, tuple[float, float]] = {rid: (a, t) for rid, a, t in store.pending_labels()}
        self._early_shadows: OrderedDict[str, dict[str, float]] = OrderedDict()
        self.totals = FeedbackReport(**documents.get(TOTALS_DOCUMENT, {}))
        self._capped_at = -float("inf")

    def record(self, rows: Sequence[PredictionRow], shadow_rows: Sequence[PredictionRow] = ()) -> FeedbackReport:
        """Log predictions; labels that were waiting for them are applied now.

        A row replaces an earlier prediction under the same request id (a label refers to the
        latest answer); a shadow row adds a mirrored version's output to its request's row, now
        or, where that row comes in a later batch, then.
        """
        # Dropped only once stored: a store that fails has the router send its rows again, without them.
        early = {rid: self._early_shadows[rid] for rid, _, _ in rows if rid in self._early_shadows}
        rows = [(rid, created, {**members, **early.get(rid, {})}) for rid, created, members in rows]
        for rid, created, members in rows:
            self._recent[rid] = (created, members)
            self._recent.move_to_end(rid)
        logged = self._predictions_of((rid for rid, _, _ in shadow_rows), self.clock())
        merged = []
        for rid, _, members in shadow_rows:
            if rid in logged:
                created, before = logged[rid]
                logged[rid] = (created, {**before, **members})
                merged.append((rid, created, logged[rid][1]))
                if rid in self._recent:
                    self._recent[rid] = logged[rid]
            else:
                self._early_shadows[rid] = {**self._early_shadows.get(rid, {}), **members}
                if len(self._early_shadows) > EARLY_SHADOWS:
                    self._early_shadows.popitem(last=False)
        # Labels waiting for these rows join before eviction, which may drop the rows themselves.
        waiting = {rid: self._recent[rid][1] for rid, _, _ in rows if rid in self._pending}
        self._evict()
        self._logged += self.store.log_predictions([*rows, *merged])
        report = self._join_waiting(waiting) if waiting else FeedbackReport()
        for rid in early:
            self._early_shadows.pop(rid, None)
        return report

    def _join_waiting(self, waiting: dict[str, dict[str, float]]) -> FeedbackReport:
        """Apply the pending labels of predictions that just came (request id -> members' predictions)."""
        report = FeedbackReport()
        joined, changes = [], {}
        with self._all_or_nothing():
            for rid, members in waiting.items():
                actual, _ = self._pending.pop(rid)
                joined.append((members, actual))
                changes[rid] = "applied"
            report.applied = self._learn(joined)
            report.pending = -len(waiting)
            self._save(report, [], changes, learned=True)
        return report

    def feedback(self, items: Sequence[tuple[str, float]]) -> FeedbackReport:
        """Join labels (request_id, actual) with the log and learn from them, durably, once each."""
        now = self.clock()
        self._evict()  # a prediction past max_age_s is not joinable, whether or not others came since
        report = FeedbackReport(received=len(items))
        fresh: dict[str, float] = {}
        for rid, actual in items:
            if rid in fresh:
                report.duplicate += 1
            else:
                fresh[rid] = actual
        seen = self.store.known_labels(fresh)
        report.duplicate += len(seen)
        logged = self._predictions_of((rid for rid in fresh if rid not in seen), now)
        joined, rows = [], []
        with self._all_or_nothing():
            for rid, actual in fresh.items():
                if rid in seen:
                    continue
                if rid in logged:
                    joined.append((logged[rid][1], actual))
                    status = "applied"
                elif self.spec.join_grace_s > 0:
                    self._pending[rid] = (actual, now)
                    status = "pending"
                else:
                    status = "unknown"
                setattr(report, status, getattr(report, status) + 1)
                rows.append((rid, actual, now, status))
            # Others' labels whose grace ran out count in the totals, not in this caller's report.
            changes, late, settled = self._settle_pending(now)
            self._learn(joined + late)
            self._save(report, rows, changes, learned=bool(joined or late), others=settled)
        return report

    @contextmanager
    def _all_or_nothing(self) -> Iterator[None]:
        """Trust, the observer, the totals and the waiting labels as they were, should the
        block fail (the store's transaction among others): memory never runs ahead of the store."""
        trust, totals, pending = self.trust.state(), replace(self.totals), dict(self._pending)
        observed = self.observer.documents() if self.observer is not None else None
        try:
            yield
        except BaseException:
            self.trust.restore(trust)
            self.totals, self._pending = totals, pending
            if self.observer is not None:
                self.observer.restore(observed)
            raise

    def _learn(self, joined: list[Joined]) -> int:
        applied = self.trust.update(joined)
        if self.observer is not None:
            self.observer.observe_labels(joined, self.trust.residual_bound())
        return applied

    def _save(self, report: FeedbackReport, rows: list[tuple[str, float, float, str]], changes: dict[str, str],
              learned: bool, others: FeedbackReport | None = None) -> None:
        """Store labels `rows` and status `changes` with the totals (plus `report`, and `others`:
        what earlier callers' waiting labels became) and, where trust `learned`, its state: one transaction."""
        self.totals.add(report)
        if others is not None:
            self.totals.add(others)
        documents = {TOTALS_DOCUMENT: asdict(self.totals)}
        if learned:
            documents[TRUST_DOCUMENT] = self.trust.state()
            if self.observer is not None:
                documents.update(self.observer.documents())
        self.store.save_labels(rows, changes, documents)

    def expire(self) -> None:
        """Count labels whose prediction never came as unknown; prune the durable log and labels."""
        now = self.clock()
        with self._all_or_nothing():
            changes, late, settled = self._settle_pending(now)
            if changes:
                self._learn(late)
                self._save(FeedbackReport(), [], changes, learned=bool(late), others=settled)
        # A label may come before its prediction (within the grace) and a router's clock may run
        # ahead of this one: a label goes only once no prediction it could join is left.
        capping = now - self._capped_at >= COUNT_CAP_EVERY_S
        self._logged -= self.store.prune(now - self.spec.max_age_s, self.spec.join_grace_s + CLOCK_SKEW_S,
                                         self.spec.max_predictions if capping else None)
        if capping:
            self._capped_at = now

    def _settle_pending(self, now: float) -> tuple[dict[str, str], list[Joined], FeedbackReport]:
        """Labels whose grace ran out: joined where their prediction is logged after all (its
        record came while the store failed to keep their join, and may since have left memory),
        else unknown. Their new statuses, the joined ones, and how they count in the totals."""
        due = [rid for rid, (_, at) in self._pending.items() if now - at > self.spec.join_grace_s]
        if not due:
            return {}, [], FeedbackReport()
        logged = self._predictions_of(due, now)
        changes, late = {}, []
        for rid in due:
            actual, _ = self._pending.pop(rid)
            if rid in logged:
                late.append((logged[rid][1], actual))
            changes[rid] = "applied" if rid in logged else "unknown"
        unknown = len(due) - len(late)
        return changes, late, FeedbackReport(applied=len(late), pending=-len(due), unknown=unknown)

    def _predictions_of(self, request_ids: Iterable[str], now: float) -> dict[str, tuple[float, dict[str, float]]]:
        """When and what the members predicted, for those of `request_ids` whose prediction is
        logged and still joinable: from memory, else read from the store."""
        oldest_allowed = now - self.spec.max_age_s
        ids = list(request_ids)
        found = {rid: self._recent[rid] for rid in ids if rid in self._recent and self._recent[rid][0] >= oldest_allowed}
        found.update(self.store.logged_predictions((rid for rid in ids if rid not in found), oldest_allowed))
        return found

    def _evict(self) -> None:
        oldest_allowed = self.clock() - self.spec.max_age_s
        while self._recent and (
            len(self._recent) > self._cached or next(iter(self._recent.values()))[0] < oldest_allowed
        ):
            self._recent.popitem(last=False)

    def __len__(self) -> int:
        """Predictions in the log."""
        return self._logged

