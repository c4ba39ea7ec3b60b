"""Merging concurrent requests into one model call, without waiting when idle.

A fixed batching window (wait N ms for company) taxes every request at low load. Here a call
starts as soon as a slot is free; requests that arrive while `max_in_flight` calls are busy
queue up and leave together in the next call. The batch therefore grows with load by itself,
and a lone request pays no wait (Clipper's adaptive batching without the timer).
"""
from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable

import numpy as np

ModelCall = Callable[[np.ndarray], Awaitable[np.ndarray]]


class CoalescingBatcher:
    """Queue of row blocks for one model; each call carries everything queued, up to `max_rows`."""

    def __init__(self, call: ModelCall, max_rows: int, max_in_flight: int, timeout_s: float) -> None:
        self.call = call
        self._max_rows = max_rows
        self._max_in_flight = max_in_flight
        self._timeout_s = timeout_s
        self._queue: deque[tuple[np.ndarray, asyncio.Future[np.ndarray]]] = deque()
        self._in_flight = 0

    @property
    def queued(self) -> int:
        return len(self._queue)

    def submit(self, rows: np.ndarray) -> asyncio.Future[np.ndarray]:
        """Queue `rows` [n, ...]; the future resolves to the model's n outputs or its error."""
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        # A caller that gave up at its deadline never reads the error; mark it read.
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._queue.append((rows, future))
        self._start_calls()
        return future

    def _start_calls(self) -> None:
        while self._in_flight < self._max_in_flight:
            # Rows whose caller stopped waiting (cancelled past its deadline) are not sent.
            while self._queue and self._queue[0][1].done():
                self._queue.popleft()
            if not self._queue:
                return
            self._in_flight += 1
            asyncio.get_running_loop().create_task(self._run(self._take_batch()))

    def _take_batch(self) -> list[tuple[np.ndarray, asyncio.Future[np.ndarray]]]:
        batch = [self._queue.popleft()]
        rows = len(batch[0][0])
        while self._queue and rows + len(self._queue[0][0]) <= self._max_rows:
            entry = self._queue.popleft()
            if not entry[1].done():
                rows += len(entry[0])
                batch.append(entry)
        return batch

    async def _run(self, batch: list[tuple[np.ndarray, asyncio.Future[np.ndarray]]]) -> None:
        try:
            inputs = batch[0][0] if len(batch) == 1 else np.concatenate([rows for rows, _ in batch])
            async with asyncio.timeout(self._timeout_s):  # unlike wait_for, no extra task per call
                outputs = await self.call(inputs)
            if len(outputs) != len(inputs):
                raise ValueError(f"model returned {len(outputs)} outputs for {len(inputs)} inputs")
            offset = 0
            for rows, future in batch:
                if not future.done():
                    future.set_result(outputs[offset : offset + len(rows)])
                offset += len(rows)
        except Exception as exc:  # noqa: BLE001 - every failure goes to the callers of this batch
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
        finally:
            self._in_flight -= 1
            self._start_calls()
