"""Splits, shadows and canary rollouts of every member: validated, persisted, advanced by their gates.

No Ray: the control-plane deployment owns one `TrafficController`, feeds it the routers' call
statistics and the joined feedback, ticks it every second and serves `snapshot()` to the
routers. Every change and every rollout transition is written with its reason to the state
store in one transaction, so a restart resumes exactly where it was.

The graph config declares each member's traffic and rollout; changes made through the admin
API persist over restarts for as long as the config declares the same thing. Deploying a
config that declares something else means the operator changed their mind: the config wins.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from ensemble.rollout import ACTIVE, Rollout, RolloutPlan, Transition
from ensemble.store import StateStore
from ensemble.strict import StrictModel
from ensemble.traffic import ChangeRejected, check_shadow, check_split

TRAFFIC_DOCUMENT = "traffic"
ROLLOUTS_DOCUMENT = "rollouts"
HISTORY_PER_MEMBER = 200  # the newest transitions each member's report shows
logger = logging.getLogger(__name__)
Action = Literal["pause", "resume", "promote", "rollback"]


class TrafficChange(StrictModel):
    """A change of one member's traffic; what is left out stays as it is."""

    split: dict[str, float] | None = Field(None, description="Share of the member's requests per version; sums to 1.")
    shadow: dict[str, float] | None = Field(
        None, description="Share of the member's requests mirrored to each version (0 to 1), answered by nobody."
    )


@dataclass(frozen=True)
class Declared:
    """What the graph config declares for one member."""

    versions: tuple[str, ...]
    split: dict[str, float]
    shadow: dict[str, float]
    rollout: RolloutPlan | None


class TrafficController:
    def __init__(self, store: StateStore, declared: Mapping[str, Declared],
                 clock: Callable[[], float] = time.time) -> None:
        self.store, self.declared, self.clock = store, dict(declared), clock
        self.version_of = {f"{m}-{v}": (m, v) for m, d in declared.items() for v in d.versions}
        documents = store.get_documents()
        saved_traffic = documents.get(TRAFFIC_DOCUMENT, {})
        saved_rollouts = documents.get(ROLLOUTS_DOCUMENT, {})
        self.splits: dict[str, dict[str, float]] = {}
        self.shadows: dict[str, dict[str, float]] = {}
        self.rollouts: dict[str, Rollout] = {}
        self._unpublished: list[tuple[str, str, dict]] = []  # saved events not yet counted as metrics
        events: list[tuple[str, str, dict]] = []
        for member, spec in self.declared.items():
            saved = saved_traffic.get(member)
            if saved and saved["declared"] == _declared_traffic(spec) and self._deployable(member, saved):
                self.splits[member], self.shadows[member] = saved["split"], saved["shadow"]
            else:
                self.splits[member], self.shadows[member] = dict(spec.split), dict(spec.shadow)
                if saved:
                    events.append(("traffic", member, {"reason": "the graph config declares other traffic",
                                                       "split": spec.split, "shadow": spec.shadow}))
            if kept := saved_rollouts.get(member):
                if (rollout := _restored(kept, spec)) is not None:
                    self.rollouts[member] = rollout
                    if rollout.active:
                        self.splits[member] = rollout.split(list(spec.versions))
                    continue
                # The config declares another rollout or none (or not its versions). One under way
                # takes its split with it; one that ended leaves the split it decided on.
                if kept["rollout"]["status"] in ACTIVE:
                    self.splits[member] = dict(spec.split)
                    events.append(("traffic", member, {"reason": "the graph config no longer declares the rollout "
                                                       "under way", "split": spec.split,
                                                       "shadow": self.shadows[member]}))
            if spec.rollout is not None:
                events.append(self._start_declared(member, spec.rollout))
        self._save(events)

    # -- what routers serve with -----------------------------------------------------------
    def snapshot(self) -> dict[str, dict[str, dict[str, float]]]:
        return {member: {"split": self.splits[member], "shadow": self.shadows[member]} for member in self.declared}

    # -- changes ---------------------------------------------------------------------------
    def set_traffic(self, member: str, change: TrafficChange) -> None:
        spec = self._member(member)
        rollout = self.rollouts.get(member)
        if change.split is not None:
            if rollout is not None and rollout.active:
                raise ChangeRejected(f"a rollout of {member} to {rollout.canary} is {rollout.status}: "
                                     "promote or roll it back first", conflict=True)
            check_split(change.split, spec.versions)
        if change.shadow is not None:
            check_shadow(change.shadow, spec.versions)
        split = dict(change.split) if change.split is not None else self.splits[member]
        shadow = {v: s for v, s in change.shadow.items() if s > 0} if change.shadow is not None else self.shadows[member]
        with self._all_or_nothing():
            self.splits[member], self.shadows[member] = split, shadow
            self._save([("traffic", member, {"reason": "set through the admin API", "split": split, "shadow": shadow})])

    def start_rollout(self, member: str, plan: RolloutPlan, stable: str | None = None) -> None:
        self._member(member)
        current = self.rollouts.get(member)
        if current is not None and current.active:
            raise ChangeRejected(f"a rollout of {member} to {current.canary} is already {current.status}",
                                 conflict=True)
        with self._all_or_nothing():
            self._save([self._start(member, plan, stable, "started through the admin API")])

    def act(self, member: str, action: Action) -> None:
        self._member(member)
        rollout = self.rollouts.get(member)
        if rollout is None:
            raise ChangeRejected(f"{member} has no rollout", conflict=True)
        with self._all_or_nothing():
            try:
                transition = getattr(rollout, action)(self.clock())
            except ValueError as exc:
                raise ChangeRejected(str(exc), conflict=True) from None
            self._save([self._apply(rollout, transition)])

    # -- evidence and time -----------------------------------------------------------------
    def observe_calls(self, stats: Mapping[str, Mapping[str, Any]]) -> None:
        """Call statistics from a router: deployment name -> {requests, errors, latency histogram}."""
        for name, s in stats.items():
            rollout = self._rollout_of(name)
            if rollout is not None:
                rollout.observe_calls(self.version_of[name][1], s["requests"], s["errors"], s["latency"])

    def observe_labels(self, joined: Iterable[tuple[Mapping[str, float], float]], bound: float = math.inf) -> None:
        """Joined feedback (deployment name -> prediction, actual), scored per version for the
        gates, each residual at most `bound` (trust's): one label in the wrong unit on either
        side would otherwise decide the MSE gate by itself."""
        for predictions, actual in joined:
            for name, predicted in predictions.items():
                rollout = self._rollout_of(name)
                if rollout is not None:
                    rollout.observe_label(self.version_of[name][1], min(max(actual - predicted, -bound), bound))

    def tick(self) -> bool:
        """Judge every progressing rollout; saves and returns True when traffic changed."""
        now = self.clock()
        with self._all_or_nothing():
            events = [self._apply(r, t) for r in self.rollouts.values() if (t := r.evaluate(now)) is not None]
            # Progress (counts, waiting reasons) is saved too, so a restart resumes a step mid-way.
            if events or any(r.status == "progressing" for r in self.rollouts.values()):
                self._save(events)
        return bool(events)

    def drain_events(self) -> list[tuple[str, str, dict]]:
        """Events (kind, member, detail) saved since the last call, for metrics."""
        events, self._unpublished = self._unpublished, []
        return events

    # -- reports ---------------------------------------------------------------------------
    def report(self) -> dict[str, Any]:
        traffic = self.snapshot()
        # Each member's own newest: one busy member's changes must not push another's out.
        return {
            member: {
                "traffic": traffic[member],
                "rollout": self.rollouts[member].report() if member in self.rollouts else None,
                "history": self.store.events(subject=member, limit=HISTORY_PER_MEMBER),
            }
            for member in self.declared
        }

    # -- internals ---------------------------------------------------------------------------
    def _member(self, member: str) -> Declared:
        if member not in self.declared:
            raise ChangeRejected(f"unknown member {member!r} (members: {sorted(self.declared)})")
        return self.declared[member]

    def _rollout_of(self, name: str) -> Rollout | None:
        member = self.version_of.get(name, (None,))[0]
        rollout = self.rollouts.get(member) if member else None
        return rollout if rollout is not None and rollout.status == "progressing" else None

    def _deployable(self, member: str, saved: Mapping[str, Any]) -> bool:
        versions = set(self.declared[member].versions)
        return set(saved["split"]) <= versions and set(saved["shadow"]) <= versions

    def _start_declared(self, member: str, plan: RolloutPlan) -> tuple[str, str, dict]:
        """Start the rollout the config declares, or record why it cannot start: the traffic in
        force may differ from the config's (a rollout of the same canary that ended in promotion,
        an admin's split), and one the config cannot start must not stop the control plane."""
        try:
            return self._start(member, plan, None, "declared in the graph config")
        except ChangeRejected as exc:
            logger.warning("the rollout of %s that the graph config declares did not start: %s", member, exc)
            return ("rollout.not_started", member, {"reason": f"declared in the graph config, not started: {exc}",
                                                    "split": self.splits[member], "canary": plan.canary})

    def _start(self, member: str, plan: RolloutPlan, stable: str | None, why: str) -> tuple[str, str, dict]:
        versions = list(self.declared[member].versions)
        if plan.canary not in versions:
            raise ChangeRejected(f"canary {plan.canary!r} is not a deployed version of {member} ({versions})")
        # A rollout moves traffic away from its stable version: one serving nothing has none to give.
        serving = {v: s for v, s in self.splits[member].items() if v != plan.canary and s > 0}
        stable = stable or max(serving, key=serving.__getitem__, default=None)
        if stable not in serving:
            raise ChangeRejected(f"stable version {stable!r} must be a version of {member} other than the canary "
                                 f"{plan.canary!r} that serves traffic (split in force: {self.splits[member]})")
        rollout = Rollout(member=member, stable=stable, plan=plan, started_at=self.clock())
        self.rollouts[member] = rollout
        return self._apply(rollout, Transition("started", why, {"stable": stable, "canary": plan.canary,
                                                               "plan": plan.model_dump()}))

    def _apply(self, rollout: Rollout, transition: Transition) -> tuple[str, str, dict]:
        self.splits[rollout.member] = rollout.split(list(self.declared[rollout.member].versions))
        return (f"rollout.{transition.kind}", rollout.member,
                {"reason": transition.reason, "split": self.splits[rollout.member], **transition.detail})

    def documents(self) -> dict[str, Any]:
        """The whole state as the store keeps it; the ledger saves it with the labels it observed."""
        traffic = {m: {"split": self.splits[m], "shadow": self.shadows[m], "declared": _declared_traffic(d)}
                   for m, d in self.declared.items()}
        rollouts = {m: {"rollout": r.state(),
                        "declared": self.declared[m].rollout.model_dump() if self.declared[m].rollout else None}
                    for m, r in self.rollouts.items()}
        return {TRAFFIC_DOCUMENT: traffic, ROLLOUTS_DOCUMENT: rollouts}

    def restore(self, documents: Mapping[str, Any]) -> None:
        """Go back to the state `documents()` gave."""
        traffic = documents[TRAFFIC_DOCUMENT]
        self.splits = {m: t["split"] for m, t in traffic.items()}
        self.shadows = {m: t["shadow"] for m, t in traffic.items()}
        self.rollouts = {m: Rollout.from_state(kept["rollout"]) for m, kept in documents[ROLLOUTS_DOCUMENT].items()}

    @contextmanager
    def _all_or_nothing(self) -> Iterator[None]:
        """The state as it was, should the block fail (the store's transaction among others): a
        change the store did not keep is not served either."""
        saved = self.documents()
        try:
            yield
        except BaseException:
            self.restore(saved)
            raise

    def _save(self, events: list[tuple[str, str, dict]]) -> None:
        self.store.put_documents(self.documents(), events)
        self._unpublished.extend(events)


def shares_to_publish(snapshot: Mapping[str, Mapping[str, Mapping[str, float]]], part: Literal["split", "shadow"],
                      published: set[tuple[str, str]]) -> dict[tuple[str, str], float]:
    """(member, version) -> its share in `part` of `snapshot`, and 0 for every version in
    `published` that `snapshot` leaves out (a shadow set to 0 is dropped, a split may omit a
    version): a gauge keeps its last value until it is set again. Adds what it returns to `published`."""
    shares = {(member, version): share for member, traffic in snapshot.items() for version, share in traffic[part].items()}
    shares |= {key: 0.0 for key in published - shares.keys()}
    published.update(shares)
    return shares


def _declared_traffic(spec: Declared) -> dict[str, dict[str, float]]:
    return {"split": spec.split, "shadow": spec.shadow}


def _restored(kept: Mapping[str, Any], spec: Declared) -> Rollout | None:
    """The saved rollout, where the config still declares it (or none, for one started through
    the admin API) and both its versions; None otherwise, or where its plan is no longer valid."""
    if kept["declared"] != (spec.rollout.model_dump() if spec.rollout else None):
        return None
    try:
        rollout = Rollout.from_state(kept["rollout"])
    except ValueError:  # saved under older rules (steps: [100] could never pass its MSE gate)
        return None
    return rollout if {rollout.stable, rollout.canary} <= set(spec.versions) else None
