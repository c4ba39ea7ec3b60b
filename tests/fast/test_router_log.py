"""The router's shipping of its prediction log, with a stand-in control plane (no Ray)."""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import SimpleNamespace

from deployments.router import EnsembleRouter
from ensemble.rollout import CallStats

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
