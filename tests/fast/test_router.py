"""The router's answers and the shipping of its prediction log, with stand-ins for Serve and the control plane (no Ray)."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from types import MethodType, SimpleNamespace
from typing import Any

import numpy as np
import orjson
from ray.exceptions import RayTaskError
from ray.util import metrics

from deployments.http_callback import answer_asgi
from deployments.router import EnsembleRouter
from ensemble.fanout import EnsemblePredictor
from ensemble.rollout import CallStats
from ensemble.validation import Limits

Router = EnsembleRouter.func_or_class


class SlowLog:
    """A control plane that stores what it is sent after a while."""

    def __init__(self) -> None:
        self.stored: list[tuple] = []
        self.record = SimpleNamespace(remote=self._record)

    async def _record(self, rows: list[tuple], shadow_rows: list[tuple], calls: dict) -> bool:
        await asyncio.sleep(0.05)
        self.stored.extend(rows)
        return True


async def until(condition: Callable[[], bool], timeout_s: float = 2.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.001)


def test_a_cancelled_flush_still_ships_the_rows_it_took():
    """A feedback request flushes the log first; its client going away cancels the request."""

    async def scenario() -> tuple[int, int]:
        control = SlowLog()
        router = SimpleNamespace(
            metrics=SimpleNamespace(publish=lambda: None), _log_rows=[(f"r{i}", 0.0, {"a-v1": 0.0}) for i in range(500)],
            _shadow_rows=[], _calls=CallStats(), control=control, _shipping=asyncio.Lock())
        router._ship = lambda: Router._ship(router)
        flush = asyncio.create_task(Router._flush_log(router))
        await until(lambda: not router._log_rows)  # the shipment took the rows and is under way
        flush.cancel()
        await until(lambda: bool(control.stored))  # the shielded shipment ends by itself
        return len(control.stored), len(router._log_rows)

    assert asyncio.run(scenario()) == (500, 0)



class Counted:
    """RouterMetrics' count: (status, arrived, outcomes, degraded answers) per request."""

    def __init__(self) -> None:
        self.counts: list[tuple] = []

    def count(self, status: int, arrived: float, outcomes: tuple = (), degraded: int = 0) -> None:
        self.counts.append((status, degraded))


def answering_router(member: Callable) -> SimpleNamespace:
    router = SimpleNamespace(limits=Limits(128, 8, 1024, 256, 8 * 1024 * 1024), metrics=Counted(),
                             _calls=CallStats(), _log_rows=[])
    router.predictor = EnsemblePredictor({"a": {"v1": member}}, {"a": {"split": {"v1": 1.0}}}, lambda: {"a-v1": 1.0},
                                         0.2, 64, 1)
    router.answer_predict = MethodType(Router.answer_predict, router)
    return router


def test_a_refused_request_counts_no_degraded_answers():
    async def broken(rows: np.ndarray) -> np.ndarray:
        raise RuntimeError("down")

    async def scenario() -> list[tuple]:
        router = answering_router(broken)
        body = orjson.dumps({"instances": [np.ones((128, 8)).tolist()] * 3})
        status, _ = await router.answer_predict(body, time.perf_counter())
        assert status == 503
        return router.metrics.counts

    assert asyncio.run(scenario()) == [(503, 0)]


def test_a_predict_client_that_leaves_mid_body_is_counted_as_499_and_sent_nothing():
    async def scenario() -> tuple[list[tuple], list[dict]]:
        router = answering_router(None)  # never reached
        messages = iter([{"type": "http.request", "body": b'{"window": [[1', "more_body": True},
                         {"type": "http.disconnect"}])
        sent: list[dict] = []

        async def receive() -> dict:
            return next(messages)

        async def send(message: dict) -> None:
            sent.append(message)

        await answer_asgi(router.answer_predict, 1024, {"headers": []}, receive, send)
        return router.metrics.counts, sent

    assert asyncio.run(scenario()) == ([(499, 0)], [])


class FlakyLog:
    """A control plane whose first answers to `record` are `first` (False: its store failed; an
    exception: it failed on the rows), then stores."""

    def __init__(self, *first: bool | Exception) -> None:
        self.first = list(first)
        self.stored: list[tuple] = []
        self.shadows: list[tuple] = []
        self.record = SimpleNamespace(remote=self._record)

    async def _record(self, rows: list[tuple], shadow_rows: list[tuple], calls: dict) -> bool:
        if self.first:
            answer = self.first.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer
        self.stored.extend(rows)
        self.shadows.extend(shadow_rows)
        return True


def bound(router: SimpleNamespace, *names: str) -> SimpleNamespace:
    """`router` with the router's methods `names`, as it would call them on itself."""
    for name in names:
        setattr(router, name, MethodType(getattr(Router, name), router))
    return router


def shipping_router(control: object, rows: int = 0, shadow_rows: int = 0) -> SimpleNamespace:
    router = SimpleNamespace()
    router.args = SimpleNamespace(router=SimpleNamespace(log_flush_s=0.01))
    router.metrics = SimpleNamespace(publish=lambda: None)
    router.dropped_log_rows = metrics.Counter("test_prediction_log_dropped", "Ray's counter: it refuses inc(0).")
    router.control, router._calls, router._shipping = control, CallStats(), asyncio.Lock()
    router._log_rows = [(f"r{i}", 0.0, {"a-v1": 0.0}) for i in range(rows)]
    router._shadow_rows = [(f"s{i}", 0.0, {"a-v2": 0.0}) for i in range(shadow_rows)]
    return bound(router, "_ship_log", "_flush_log", "_ship", "_flushed")


def test_a_refused_shipment_of_shadow_outputs_alone_leaves_the_log_shipping():
    async def scenario() -> int:
        control = FlakyLog(RayTaskError("record", "Traceback: refused", RuntimeError("refused")))
        router = shipping_router(control, shadow_rows=1)
        shipping = asyncio.create_task(router._ship_log())
        await until(lambda: not control.first)
        router._log_rows.extend((f"later{i}", 0.0, {"a-v1": 0.0}) for i in range(3))
        await until(lambda: len(control.stored) == 3 or shipping.done())
        shipping.cancel()
        return len(control.stored)

    assert asyncio.run(scenario()) == 3


def test_a_stopping_router_tries_again_until_its_predictions_are_shipped():
    async def scenario() -> tuple[int, int]:
        control = FlakyLog(False, ConnectionError("replaced"))  # its store failed, then it was replaced
        router = shipping_router(control, rows=40, shadow_rows=2)
        await Router.__del__(router)
        return len(control.stored), len(control.shadows)

    assert asyncio.run(scenario()) == (40, 2)


def test_a_starting_router_asks_a_control_plane_that_failed_once_again():
    async def scenario() -> dict:
        answers: list[dict | Exception] = [ConnectionError("its replica died"), {
            "epoch": 7, "weights": {"a-v2": 1.0}, "traffic": {"a": {"split": {"v2": 1.0}, "shadow": {}}}}]

        async def snapshot(epoch: int, wait_s: float) -> dict:
            answer = answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer

        router = bound(SimpleNamespace(), "_snapshot_taken", "_poll_control")
        router.control = SimpleNamespace(snapshot=SimpleNamespace(remote=snapshot))
        router.predictor = EnsemblePredictor({"a": {"v1": None, "v2": None}}, {"a": {"split": {"v1": 1.0}}},
                                             lambda: {}, 0.2, 64, 1)
        router._epoch, router._applied, router.weights = -1, router.predictor.traffic(), {}
        await Router._first_snapshot(router, 60.0)
        return router.predictor.traffic()["a"]["split"]

    assert asyncio.run(scenario()) == {"v2": 1.0}


def test_members_that_do_not_answer_are_reported_unavailable_in_time(monkeypatch):
    monkeypatch.setattr("deployments.router.INFO_WAIT_S", 0.05)

    async def scenario() -> dict:
        async def answers() -> dict:
            return {"deployment": "a-v1", "runtime": "xgboost"}

        async def stuck() -> dict:  # a version still deploying: Serve holds the call
            await asyncio.sleep(3600)

        router = SimpleNamespace()
        router._info = {"a": {"v1": answers, "v2": stuck}}
        router.args = SimpleNamespace(members={"a": SimpleNamespace(prior=1.0, versions={"v1": {}, "v2": {}})})
        router.predictor = SimpleNamespace(traffic=lambda: {"a": {"split": {"v1": 1.0}, "shadow": {}}})
        async with asyncio.timeout(5):
            return orjson.loads((await Router.describe_members(router)).body)["a"]["versions"]

    assert asyncio.run(scenario()) == {"v1": {"deployment": "a-v1", "runtime": "xgboost"}, "v2": {"error": "unavailable"}}
