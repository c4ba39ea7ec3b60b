"""The control plane: one replica that owns the persistent state and learns trust.

Routers send it their predictions (batched, off the request path) and the labels they
receive, and long-poll it for the weights in force, so any router replica can take feedback
for any prediction and every replica serves the same weights.
"""
import asyncio
import logging
import time
from typing import Any

from ray import serve
from ray.util import metrics

from ensemble.config import GraphArgs, deployment_name
from ensemble.ledger import Ledger, PredictionRow
from ensemble.store import StateStore
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


def _baselines(args: GraphArgs) -> dict[str, float]:
    """Holdout MSE of each member version, from its manifest."""
    baselines = {}
    for model, spec in args.members.items():
        for version in spec.versions:
            try:
                baselines[deployment_name(model, version)] = read_manifest(args.model_root, model, version).holdout.mse
            except ModelLoadError:
                logger.warning("no manifest for %s/%s: its drift baseline will be its first labels", model, version)
    return baselines


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
        self.ledger = Ledger(StateStore(self.args.state.url), trust, self.args.ledger)
        self.epoch = 0  # bumps whenever what routers serve with changes
        self._changed = asyncio.Event()
        self.metrics = TrustMetrics()
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
                self.metrics.publish(self.trust_report()["members"])
            except Exception:  # noqa: BLE001 - housekeeping must outlive a passing store error
                logger.exception("control-plane housekeeping failed")

    async def record(self, rows: list[PredictionRow]) -> None:
        if self.ledger.record(rows).applied:
            self._bump()

    async def feedback(self, items: list[tuple[str, float]]) -> dict[str, int]:
        report = self.ledger.feedback(items)
        if report.applied:
            self._bump()
        return vars(report)

    def _weights(self) -> dict[str, float]:
        return self.ledger.trust.weights(self.members)

    async def snapshot(self, known_epoch: int, wait_s: float) -> dict[str, Any]:
        """What routers serve with; waits up to `wait_s` for a newer epoch than `known_epoch`."""
        if known_epoch == self.epoch:
            try:
                await asyncio.wait_for(asyncio.shield(self._changed.wait()), wait_s)
            except asyncio.TimeoutError:
                pass
        return {"epoch": self.epoch, "weights": self._weights()}

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
