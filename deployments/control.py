"""The control plane: one replica that owns the persistent state, learns trust and runs rollouts.

Routers send it their predictions and call statistics (batched, off the request path) and the
labels and admin changes they receive, and long-poll it for the weights and traffic in force,
so any router replica can take feedback for any prediction and every replica serves the same
weights and splits within one long-poll round trip of a change.
"""
import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from ray import serve
from ray.util import metrics

from ensemble.config import GraphArgs, deployment_name
from ensemble.ledger import Ledger, PredictionRow
from ensemble.rollout import RolloutPlan
from ensemble.store import StateStore, StateStoreError, StateStoreSuperseded
from ensemble.traffic import ChangeRejected
from ensemble.traffic_control import Action, Declared, TrafficChange, TrafficController, shares_to_publish
from ensemble.trust import TrustBook
from models.errors import ModelLoadError
from models.repository import read_manifest

logger = logging.getLogger("ray.serve")
HOUSEKEEPING_S = 1.0


class TrustMetrics:
    """Weight, rolling error and drift flag per member version, as Ray gauges."""

    def __init__(self) -> None:
        tags = ("model", "version")
        self.weight = metrics.Gauge("ensemble_trust_weight", "Trust weight of a member version.", tags)
        self.rolling_mse = metrics.Gauge("ensemble_rolling_mse", "Rolling MSE of a member version.", tags)
        self.drift = metrics.Gauge("ensemble_drift", "1 when a member version is flagged for drift.", tags)

    def publish(self, report: dict[str, dict[str, Any]]) -> None:
        for member in report.values():
            tags = {"model": member["model"], "version": member["version"]}
            self.weight.set(member["weight"], tags)
            self.drift.set(float(member["drift"]["drift"]), tags)
            if member["drift"]["rolling_mse"] is not None:
                self.rolling_mse.set(member["drift"]["rolling_mse"], tags)


class RolloutMetrics:
    """Traffic share of every member version and rollout transitions, as Ray metrics."""

    def __init__(self) -> None:
        tags = ("model", "version")
        self.share = metrics.Gauge("ensemble_traffic_share", "Share of a member's traffic a version receives.", tags)
        self.shadow = metrics.Gauge("ensemble_shadow_share", "Share of a member's traffic mirrored to a version.", tags)
        self.transitions = metrics.Counter(
            "ensemble_rollout_transitions", "Rollout transitions (started, advanced, promoted, rolled_back...).",
            ("model", "kind"),
        )
        self._published: dict[str, set[tuple[str, str]]] = {"split": set(), "shadow": set()}

    def publish(self, snapshot: dict[str, dict[str, dict[str, float]]], events: list[tuple[str, str, dict]]) -> None:
        for kind, model, _ in events:
            self.transitions.inc(1, {"model": model, "kind": kind})
        for gauge, part in ((self.share, "split"), (self.shadow, "shadow")):
            for (model, version), share in shares_to_publish(snapshot, part, self._published[part]).items():
                gauge.set(share, {"model": model, "version": version})


def _baselines(args: GraphArgs) -> dict[str, float]:
    """Holdout MSE of each member version, from its manifest."""
    baselines = {}
    for model, spec in args.members.items():
        for version in spec.versions:
            try:
                baselines[deployment_name(model, version)] = read_manifest(args.model_root, model, version).holdout.mse
            except ModelLoadError:
                logger.warning("no manifest for %s/%s: no holdout MSE, so no drift baseline unless "
                               "trust.drift.baseline is first_labels", model, version)
    return baselines


def _unavailable(exc: StateStoreError) -> dict[str, Any]:
    logger.warning("state store failed", exc_info=exc)
    return {"status": 503, "detail": f"{exc}; nothing was applied, send it again"}


# Access logs off: routers long-poll `snapshot` every few seconds, which would flood them.
@serve.deployment(num_replicas=1, max_ongoing_requests=1000, ray_actor_options={"num_cpus": 0.1},
                  logging_config={"enable_access_log": False})
class ControlPlane:
    def __init__(self, args: dict[str, Any]) -> None:
        self.args = GraphArgs.model_validate(args)
        self.members = {
            deployment_name(model, version): (model, version)
            for model, spec in self.args.members.items()
            for version in spec.versions
        }
        priors = {name: self.args.members[model].prior for name, (model, _) in self.members.items()}
        trust = TrustBook(self.args.trust, priors, _baselines(self.args))
        store = StateStore(self.args.state.url)
        # Before reading it: Serve starts this replica while the one it replaces may still be
        # draining, whose writes would then overwrite what this one learns.
        store.claim()
        self.traffic = TrafficController(store, {
            model: Declared(tuple(spec.versions), spec.split(), dict(spec.shadow), spec.rollout)
            for model, spec in self.args.members.items()
        })
        self.ledger = Ledger(store, trust, self.args.ledger, observer=self.traffic)
        self.epoch = 0  # bumps whenever what routers serve with changes
        self._changed = asyncio.Event()
        self.metrics = TrustMetrics()
        self.rollout_metrics = RolloutMetrics()
        self._housekeeping = asyncio.get_running_loop().create_task(self._housekeep())

    def _bump(self) -> None:
        self.epoch += 1
        self._changed.set()
        self._changed = asyncio.Event()

    async def _housekeep(self) -> None:
        while True:
            await asyncio.sleep(HOUSEKEEPING_S)
            try:
                self.ledger.expire()
                if self.traffic.tick():
                    self._bump()
                self.metrics.publish(self.trust_report()["members"])
                self.rollout_metrics.publish(self.traffic.snapshot(), self.traffic.drain_events())
            except StateStoreSuperseded:
                logger.warning("a newer control plane took over the state store: this replica's housekeeping stops")
                return
            except Exception:  # noqa: BLE001 - housekeeping must outlive a passing store error
                logger.exception("control-plane housekeeping failed")

    async def record(self, rows: list[PredictionRow], shadow_rows: list[PredictionRow] = (),
                     calls: dict[str, dict[str, Any]] | None = None) -> bool:
        """Predictions, mirrored outputs and call statistics (deployment name -> counts) from a
        router. False where the store failed: the router sends the rows again (not the statistics)."""
        self.traffic.observe_calls(calls or {})
        try:
            report = self.ledger.record(rows, shadow_rows)
        except StateStoreError:
            logger.warning("the prediction log could not store %d predictions", len(rows), exc_info=True)
            return False
        if report.applied:
            self._bump()
        return True

    async def feedback(self, items: list[tuple[str, float]]) -> dict[str, Any]:
        """The feedback report, or the HTTP status and message of a store that failed (nothing applied)."""
        try:
            report = self.ledger.feedback(items)
        except StateStoreError as exc:
            return _unavailable(exc)
        if report.applied:
            self._bump()
        return {"status": 200, "report": vars(report)}

    def _weights(self) -> dict[str, float]:
        return self.ledger.trust.weights(self.members)

    async def snapshot(self, known_epoch: int, wait_s: float) -> dict[str, Any]:
        """What routers serve with; waits up to `wait_s` for a newer epoch than `known_epoch`."""
        if known_epoch == self.epoch:
            try:
                await asyncio.wait_for(asyncio.shield(self._changed.wait()), wait_s)
            except asyncio.TimeoutError:
                pass
        return {"epoch": self.epoch, "weights": self._weights(), "traffic": self.traffic.snapshot()}

    def trust_report(self) -> dict[str, Any]:
        weights = self._weights()
        members = {}
        for name, (model, version) in self.members.items():
            stats = self.ledger.trust.stats.get(name)
            members[name] = {
                "model": model,
                "version": version,
                "weight": weights[name],
                "prior": self.ledger.trust.priors[name],
                "labels": stats.labels if stats else 0,
                "recent_mse": stats.recent() if stats else None,
                "drift": self.ledger.trust.drift(name),
            }
        return {
            "policy": self.args.trust.policy,
            "members": members,
            "feedback": vars(self.ledger.totals),
            "predictions_logged": len(self.ledger),
            "at": time.time(),
        }

    async def trust(self) -> dict[str, Any]:
        return self.trust_report()

    # -- traffic and rollouts --------------------------------------------------------------
    def _change(self, apply: Callable[[], None]) -> dict[str, Any]:
        """Apply one admin change: its new state, or the HTTP status and message of its refusal."""
        try:
            apply()
        except ChangeRejected as exc:
            return {"status": 409 if exc.conflict else 422, "detail": str(exc)}
        except StateStoreError as exc:
            return _unavailable(exc)
        self._bump()
        return {"status": 200, "traffic": self.traffic.snapshot()}

    async def set_traffic(self, member: str, change: dict[str, Any]) -> dict[str, Any]:
        return self._change(lambda: self.traffic.set_traffic(member, TrafficChange.model_validate(change)))

    async def start_rollout(self, member: str, plan: dict[str, Any], stable: str | None) -> dict[str, Any]:
        return self._change(lambda: self.traffic.start_rollout(member, RolloutPlan.model_validate(plan), stable))

    async def act(self, member: str, action: Action) -> dict[str, Any]:
        return self._change(lambda: self.traffic.act(member, action))

    async def rollouts(self) -> dict[str, Any]:
        return self.traffic.report()
