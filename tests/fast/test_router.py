"""The router's answers and the shipping of its prediction log, with stand-ins for Serve and the control plane (no Ray)."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from types import MethodType, SimpleNamespace

import numpy as np
import orjson

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
