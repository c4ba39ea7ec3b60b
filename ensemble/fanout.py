"""Fan a batch of windows out to every member and combine the answers, under a deadline.

No Ray here: each member version is reached through an async `ModelCall`, which the router
deployment backs with a Serve handle and the tests back with plain functions.
"""
from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from ensemble.batching import CoalescingBatcher, ModelCall
from ensemble.combine import weighted_mean
from ensemble.config import deployment_name
from ensemble.traffic import Splitter


class CallOutcome(NamedTuple):
    """How one member version did on one request (for metrics); a tuple, as one is made per
    member and request."""

    model: str
    version: str
    rows: int
    latency_s: float
    # "ok", "error", "timeout" or "lagging" (not waited for: its calls took far longer than the
    # deadline; its rows were sent only if they were the one probe of a call)
    status: str


@dataclass
class EnsembleResult:
    models: list[str]  # member order of the matrices below
    versions: list[list[str]]  # [M][B] version each member used per instance
    predictions: list[list[float]]  # [M][B], NaN where the member did not answer
    weights: list[list[float]]  # [M][B] weights applied (0 for missing members)
    combined: list[float]  # [B], NaN where no member answered
    outcomes: list[CallOutcome]
    # Instances every member answered with no prediction for (NaN: none finite within its bounds):
    # the input, not the members.
    unpredictable: list[int] = field(default_factory=list)

    def answers(self, request_ids: Sequence[str]) -> list[dict]:
        """The v1 JSON answer of each instance, in order."""
        answers = []
        for b, request_id in enumerate(request_ids):
            members, missing = {}, []
            for m, model in enumerate(self.models):
                prediction = self.predictions[m][b]
                if math.isnan(prediction):
                    missing.append(model)
                else:
                    members[model] = {
                        "version": self.versions[m][b],
                        "prediction": prediction,
                        "weight": self.weights[m][b],
                    }
            answers.append(
                {
                    "request_id": request_id,
                    "prediction": self.combined[b],
                    "members": members,
                    "degraded": bool(missing),
                    "missing": missing,
                }
            )
        return answers

    def refusal(self, single: bool) -> tuple[int, str] | None:
        """Where an instance has no prediction: 422 if every member answered each such instance
        with no finite value (its values are far beyond what the models take: the input's fault),
        else 503 naming the members that failed and how. None where every instance has one."""
        if not any(map(math.isnan, self.combined)):
            return None
        unanswered = {b for b, value in enumerate(self.combined) if math.isnan(value)}
        if unanswered <= set(self.unpredictable):
            field = "window" if single else f"instances[{min(unanswered)}].window"
            return 422, f"{field}: no member gives a prediction for it (its values are far beyond what the models take)"
        failed = sorted({f"{o.model}-{o.version}: {o.status}" for o in self.outcomes if o.status != "ok"})
        return 503, f"no member answered ({', '.join(failed)})"

    def counted_outcomes(self, refusal: tuple[int, str] | None) -> list[CallOutcome]:
        """The member calls as metrics and a canary's gates count them: where the input is
        refused (422), every member answered each call (NaN for the input's windows), so none
        failed, and a client cannot push a canary's error rate with windows no model takes."""
        if refusal is None or refusal[0] != 422:
            return self.outcomes
        return [outcome._replace(status="ok") for outcome in self.outcomes]

    def member_predictions(self, b: int) -> dict[str, float]:
        """What each answering member version predicted for instance `b`, by deployment name."""
        return {
            deployment_name(model, self.versions[m][b]): self.predictions[m][b]
            for m, model in enumerate(self.models)
            if not math.isnan(self.predictions[m][b])
        }


@dataclass(frozen=True)
class ShadowOutcome:
    """What a mirrored call to a shadow version did; predictions only when status is "ok"."""

    model: str
    version: str
    request_ids: list[str]
    predictions: np.ndarray | None
    status: str  # "ok", "error", "timeout" or "dropped" (its queue was full)


# A member version whose calls now take more than this many deadlines is not waited for (see
# _Fanout). Not one: under saturation every member's calls hover about a tight deadline, and
# answers that wait for them keep their members (and larger merged calls); a stalled member
# is far past it.
LAGGING_DEADLINES = 2.0

TrafficSnapshot = Mapping[str, Mapping[str, Mapping[str, float]]]  # member -> {"split": ..., "shadow": ...}


class EnsemblePredictor:
    """Routes each instance to one version per member, mirrors shadow shares, batches, waits, combines."""

    def __init__(
        self,
        calls: Mapping[str, Mapping[str, ModelCall]],
        traffic: TrafficSnapshot,
        weights: Callable[[], Mapping[str, float]],
        deadline_s: float,
        max_rows: int,
        max_in_flight: int,
        member_timeout_s: float | None = None,
        on_shadow: Callable[[ShadowOutcome], None] = lambda outcome: None,
        max_shadow_rows: int = 1024,
        rng: random.Random | None = None,
        replicas: Mapping[tuple[str, str], Callable[[], int]] | None = None,
    ) -> None:
        """`replicas[(model, version)]()`: how many replicas that version runs now (one where
        unknown); `max_in_flight` calls go to each."""
        self.models = list(calls)
        self._weights = weights
        self._deadline_s = deadline_s
        self._member_timeout_s = max(member_timeout_s or deadline_s, deadline_s)
        replicas = replicas or {}
        self._batchers = {
            (model, version): CoalescingBatcher(call, max_rows, max_in_flight, self._member_timeout_s,
                                                replicas.get((model, version), lambda: 1))
            for model, versions in calls.items()
            for version, call in versions.items()
        }
        # Mirrored calls queue apart, one at a time, so they never hold up a version's own traffic.
        self._shadow_batchers = {
            key: CoalescingBatcher(batcher.call, max_rows, 1, self._member_timeout_s)
            for key, batcher in self._batchers.items()
        }
        self._shadow_rows = dict.fromkeys(self._batchers, 0)
        self._max_shadow_rows = max_shadow_rows
        self._on_shadow = on_shadow
        self._rng = rng or random.Random()
        self._splitters: dict[str, Splitter] = {}
        self._shadows: dict[str, dict[str, float]] = {}
        self.set_traffic(traffic)

    def set_traffic(self, traffic: TrafficSnapshot) -> list[str]:
        """Apply new splits and shadows; requests already routed keep their versions.

        Only the versions this predictor calls count. A member whose new split gives none of
        them a share keeps its current split and shadows; those members are returned. That
        happens in a deploy that replaces versions: the new control plane already routes to
        versions that only the new router replicas call, while the old ones still serve.
        """
        splitters, shadows, kept = {}, {}, []
        for model in self.models:
            spec = traffic.get(model, {})
            split = {v: share for v, share in spec.get("split", {}).items() if (model, v) in self._batchers}
            if any(share > 0 for share in split.values()):
                splitters[model] = Splitter(split, self._rng)
                shadows[model] = {v: share for v, share in spec.get("shadow", {}).items() if (model, v) in self._batchers}
            elif model in self._splitters:
                splitters[model], shadows[model] = self._splitters[model], self._shadows[model]
                kept.append(model)
            else:
                raise ValueError(f"the traffic gives no share to a version of {model} that is called")
        self._splitters, self._shadows = splitters, shadows
        return kept

    def traffic(self) -> dict[str, dict[str, dict[str, float]]]:
        """The splits and shadows in force."""
        return {model: {"split": dict(self._splitters[model].split), "shadow": dict(self._shadows[model])}
                for model in self.models}

    async def predict(self, windows: np.ndarray, keys: Sequence[str | None],
                      request_ids: Sequence[str] = (), arrived: float | None = None) -> EnsembleResult:
        """`arrived`: the request's `time.perf_counter()` on arrival, where its deadline starts
        (reading and validating the body count against it); default now."""
        started = time.perf_counter()
        batch = len(windows)
        versions = [self._splitters[model].choose(keys) for model in self.models]
        parts: list[tuple[int, str, np.ndarray | slice]] = []
        blocks: list[np.ndarray] = []
        for m, model in enumerate(self.models):
            chosen = dict.fromkeys(versions[m])
            for version in chosen:
                if len(chosen) == 1:
                    parts.append((m, version, slice(None)))
                    blocks.append(windows)
                else:
                    index = np.array([b for b, v in enumerate(versions[m]) if v == version])
                    parts.append((m, version, index))
                    blocks.append(windows[index])
            if self._shadows[model] and request_ids:
                self._mirror(model, versions[m], windows, request_ids)

        loop = asyncio.get_running_loop()
        batchers = [self._batchers[(self.models[m], version)] for m, version, _ in parts]
        left_s = max((started if arrived is None else arrived) + self._deadline_s - started, 0.0)
        call_times = [batcher.call_time(started) for batcher in batchers]
        lagging = [call_time > LAGGING_DEADLINES * self._deadline_s for call_time in call_times]
        fanout = _Fanout(parts, [[math.nan] * batch for _ in self.models], loop.create_future(), lagging)
        fanout.send(batchers, blocks)
        fanout.timer = loop.call_later(left_s, fanout.expire, self._member_timeout_s - self._deadline_s)
        try:
            await fanout.finished
        finally:
            fanout.timer.cancel()
            fanout.finished.cancel()  # no-op once finished; else its queued rows are not sent
        waited = time.perf_counter()

        weight_of = self._weights()
        weights = [[0.0] * batch for _ in self.models]
        outcomes = []
        for part, (m, version, index) in enumerate(parts):
            model = self.models[m]
            weight = weight_of.get(deployment_name(model, version), 0.0)
            if isinstance(index, slice):
                weights[m], rows = [weight] * batch, batch
            else:
                for b in index.tolist():
                    weights[m][b] = weight
                rows = len(index)
            done_at = fanout.done_at[part]
            # Unanswered: at least as long as it was waited for, and as long as its calls take now.
            latency = done_at - started if done_at is not None else max(waited - started, call_times[part])
            outcomes.append(CallOutcome(model, version, rows, latency, fanout.status[part]))
        combined, applied = weighted_mean(fanout.predictions, weights)
        unpredictable = [b for b, members in fanout.no_prediction.items() if members == len(self.models)]
        return EnsembleResult(self.models, versions, fanout.predictions, applied, combined, outcomes, unpredictable)

    def _mirror(self, model: str, chosen: list[str], windows: np.ndarray, request_ids: Sequence[str]) -> None:
        """Send each shadow version its share of the instances that did not already reach it; never awaited."""
        for version, share in self._shadows[model].items():
            index = [b for b, v in enumerate(chosen) if v != version and self._rng.random() < share]
            if not index:
                continue
            ids = [request_ids[b] for b in index]
            key = (model, version)
            if self._shadow_rows[key] + len(index) > self._max_shadow_rows:
                self._on_shadow(ShadowOutcome(model, version, ids, None, "dropped"))
                continue
            self._shadow_rows[key] += len(index)
            future = self._shadow_batchers[key].submit(windows[index])
            future.add_done_callback(lambda f, key=key, ids=ids: self._shadow_done(key, ids, f))

    def _shadow_done(self, key: tuple[str, str], ids: list[str], future: asyncio.Future[np.ndarray]) -> None:
        self._shadow_rows[key] -= len(ids)
        if future.cancelled() or future.exception() is not None:
            failure = future.exception() if not future.cancelled() else None
            status = "timeout" if isinstance(failure, asyncio.TimeoutError) else "error"
            self._on_shadow(ShadowOutcome(*key, ids, None, status))
        elif not (finite := np.isfinite(future.result())).all():
            # The rows it gave no prediction for are errors; the others are logged all the same.
            self._on_shadow(ShadowOutcome(*key, [i for i, ok in zip(ids, finite) if not ok], None, "error"))
            if finite.any():
                self._on_shadow(ShadowOutcome(*key, [i for i, ok in zip(ids, finite) if ok],
                                              future.result()[finite], "ok"))
        else:
            self._on_shadow(ShadowOutcome(*key, ids, future.result(), "ok"))


def _waited_for(parts: list[tuple[int, str, np.ndarray | slice]], lagging: list[bool], batch: int) -> list[bool]:
    """Which parts a request waits for: those not lagging, and every part of an instance whose
    members all lag."""
    if all(lagging) or not any(lagging):
        return [True] * len(parts)
    waited = [not lags for lags in lagging]
    covering: list[list[int]] = [[] for _ in range(batch)]
    for part, (_, _, index) in enumerate(parts):
        for b in range(batch) if isinstance(index, slice) else index.tolist():
            covering[b].append(part)
    for of_instance in covering:
        if all(lagging[part] for part in of_instance):
            for part in of_instance:
                waited[part] = True
    return waited


class _Fanout:
    """One predict call's member answers, written in by the batchers as their calls return.

    Until its deadline it waits for every member; past it, only while an instance has no
    member's prediction, for the first that gives one (a late answer beats none, as in Clipper:
    under load every member may miss a tight deadline, and one answer still makes a degraded
    prediction rather than a 503). `finished` resolves then; rows still queued for it are never
    sent. Instances count one by one: with a split, the instances of one request may go to
    different versions, and one version's answer says nothing about the others' instances.

    A member whose calls now take more than LAGGING_DEADLINES deadlines (`lagging`) is not waited
    for once every other member is in and every instance has a prediction: a stalled member would
    otherwise hold every answer to the deadline. It still gets one request's rows per call (`send`
    queues them only while its queue is empty, else holds them back), which count when they are
    in time, and its next call that takes no longer than that makes it waited for again. Rows
    held back are sent after all once no prediction can come from the others (they failed, or
    the deadline passed with an instance still without one). Where every member of an instance
    lags, all of them are waited for as usual.
    """

    __slots__ = ("parts", "predictions", "finished", "status", "done_at", "left", "waited_for", "left_waited_for",
                 "unanswered", "late", "timer", "deferred", "no_prediction")

    def __init__(self, parts: list[tuple[int, str, np.ndarray | slice]], predictions: list[list[float]],
                 finished: asyncio.Future[None], lagging: list[bool]) -> None:
        self.parts = parts
        self.predictions = predictions  # [M][B], NaN until a member's rows answer
        self.finished = finished
        batch = len(predictions[0])
        self.waited_for = _waited_for(parts, lagging, batch)
        self.status = ["timeout" if waited else "lagging" for waited in self.waited_for]
        self.done_at: list[float | None] = [None] * len(parts)
        self.left = len(parts)
        self.left_waited_for = sum(self.waited_for)
        self.unanswered = set(range(batch))  # instances no member has given a prediction for yet
        self.late = False
        self.timer: asyncio.TimerHandle | None = None
        self.deferred: list[tuple[CoalescingBatcher, np.ndarray, int]] = []  # lagging members' rows not sent
        self.no_prediction: dict[int, int] = {}  # instance -> members that answered it with no finite value

    def send(self, batchers: list[CoalescingBatcher], blocks: list[np.ndarray]) -> None:
        """Queue each part's rows with its member's batcher; a member not waited for gets them
        only while its queue is empty (one request's rows per call, a probe that tells when it
        is in time again, rather than every request's rows held until its call returns)."""
        for part, (batcher, rows) in enumerate(zip(batchers, blocks)):
            if self.waited_for[part] or not batcher.queued:
                batcher.enqueue(rows, self, part)
            else:
                self.deferred.append((batcher, rows, part))

    def wanted(self) -> bool:
        return not self.finished.done()

    def resolve(self, part: int, outputs: np.ndarray | BaseException) -> None:
        if self.finished.done():
            return
        self.done_at[part] = time.perf_counter()
        # Plain floats from here on: a request's answer is built from them, and numpy's checks
        # and item writes cost more than the few values each request holds.
        values = None if isinstance(outputs, BaseException) else outputs.tolist()
        finite = values is not None and all(map(math.isfinite, values))
        if not finite and values is not None:  # NaN where the member gave no prediction for a row
            values = [v if math.isfinite(v) else math.nan for v in values]
            index = self.parts[part][2]
            for b, value in zip(range(len(values)) if isinstance(index, slice) else index.tolist(), values):
                if math.isnan(value):
                    self.no_prediction[b] = self.no_prediction.get(b, 0) + 1
            if all(map(math.isnan, values)):
                values = None
        if values is None:
            self.status[part] = "error"
        else:
            m, _, index = self.parts[part]
            if isinstance(index, slice):
                self.predictions[m] = values
                if finite:
                    self.unanswered.clear()
                else:
                    self.unanswered.difference_update(b for b, value in enumerate(values) if not math.isnan(value))
            else:
                row = self.predictions[m]
                for b, value in zip(index.tolist(), values):
                    row[b] = value
                    if not math.isnan(value):
                        self.unanswered.discard(b)
            self.status[part] = "ok" if finite else "error"  # rows left out count as its errors
        self.left -= 1
        self.left_waited_for -= self.waited_for[part]
        if self.left == 0 or (not self.unanswered and (self.late or self.left_waited_for == 0)):
            self.finished.set_result(None)
        elif self.left_waited_for == 0:
            self._send_deferred()

    def _send_deferred(self) -> None:
        """A late answer from a lagging member beats none: send the rows held back from it."""
        deferred, self.deferred = self.deferred, []
        for batcher, rows, part in deferred:
            batcher.enqueue(rows, self, part)

    def expire(self, late_s: float) -> None:
        """The deadline: finish with what is in, or wait up to `late_s` more for a first answer."""
        if self.finished.done():
            return
        if not self.unanswered or late_s <= 0:
            self.finished.set_result(None)
        else:
            self.late = True
            self.timer = asyncio.get_running_loop().call_later(late_s, self._give_up)
            self._send_deferred()

    def _give_up(self) -> None:
        if not self.finished.done():
            self.finished.set_result(None)
