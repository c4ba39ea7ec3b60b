"""Merging concurrent requests into one model call, without waiting when idle.

A fixed batching window (wait N ms for company) taxes every request at low load. Here a call
starts as soon as a slot is free; requests that arrive while `max_in_flight` calls are busy
queue up and leave together in the next call. The batch therefore grows with load by itself,
and a lone request pays no wait (Clipper's adaptive batching without the timer). A call takes
its rows when it starts, in the event loop's next turn, not when a slot was given to it: the
requests that one turn reads from many connections go in one call, not the first alone.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Protocol

import numpy as np

ModelCall = Callable[[np.ndarray], Awaitable[np.ndarray]]


def predict_blocks(predict: Callable[[np.ndarray], np.ndarray], blocks: list[np.ndarray]) -> list[np.ndarray]:
    """Each block's outputs from one `predict` over all of them (a member merging calls)."""
    if len(blocks) == 1:
        return [predict(blocks[0])]
    outputs = predict(np.concatenate(blocks))
    return np.split(outputs, np.cumsum([len(block) for block in blocks[:-1]]))


def predict_sliced(predict: Callable[[np.ndarray], np.ndarray], windows: np.ndarray, max_rows: int) -> np.ndarray:
    """`predict` over `windows` in slices of at most `max_rows`: a member's bound on one model
    call holds whatever its callers send (the router's calls carry up to its own bound)."""
    if len(windows) <= max_rows:
        return predict(windows)
    return np.concatenate([predict(windows[start:start + max_rows]) for start in range(0, len(windows), max_rows)])


class RowsWaiter(Protocol):
    """Who receives the outputs of queued rows: `part` says which of its blocks they answer."""

    def wanted(self) -> bool:
        """False once nobody waits for the outputs any more; queued rows are then not sent."""

    def resolve(self, part: int, outputs: np.ndarray | BaseException) -> None:
        """The block's outputs, or why there are none."""


class _FutureWaiter:
    __slots__ = ("future",)

    def __init__(self, future: asyncio.Future[np.ndarray]) -> None:
        self.future = future

    def wanted(self) -> bool:
        return not self.future.done()

    def resolve(self, part: int, outputs: np.ndarray | BaseException) -> None:
        if self.future.done():
            return
        if isinstance(outputs, BaseException):
            self.future.set_exception(outputs)
        else:
            self.future.set_result(outputs)


class CoalescingBatcher:
    """Queue of row blocks for one model; each call carries everything queued, up to `max_rows`.

    A block's outputs go to its `RowsWaiter` directly from the call's task: no future or
    scheduled callback per block, which is most of the per-request cost at hundreds of
    requests per second (`submit` wraps one in a future for callers that want one).
    """

    def __init__(self, call: ModelCall, max_rows: int, max_in_flight: int, timeout_s: float,
                 replicas: Callable[[], int] = lambda: 1) -> None:
        """`max_in_flight` calls per replica of the model, and `replicas()` how many it has now:
        a member that scales out gets calls in parallel instead of the same calls spread thinner."""
        self.call = call
        self._max_rows = max_rows
        self._max_in_flight = max_in_flight
        self._replicas = replicas
        self._timeout_s = timeout_s
        self._queue: deque[tuple[np.ndarray, RowsWaiter, int]] = deque()
        self._running: list[float] = []  # start times of the calls in flight, oldest first
        self._starting = 0  # calls scheduled that have not taken their batch yet
        self._last_call_s = 0.0

    @property
    def queued(self) -> int:
        return len(self._queue)

    def call_time(self, now: float) -> float:
        """How long this model's calls take now (`now`: `time.perf_counter()`): the last finished
        call's seconds, or the age of the oldest call in flight where that is longer, since a
        model that stalled finishes no call to say so."""
        if self._running:
            return max(self._last_call_s, now - self._running[0])
        return self._last_call_s

    def submit(self, rows: np.ndarray) -> asyncio.Future[np.ndarray]:
        """Queue `rows` [n, ...]; the future resolves to the model's n outputs or its error."""
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        # A caller that gave up at its deadline never reads the error; mark it read.
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        self.enqueue(rows, _FutureWaiter(future), 0)
        return future

    def enqueue(self, rows: np.ndarray, waiter: RowsWaiter, part: int) -> None:
        """Queue `rows` [n, ...]; `waiter.resolve(part, ...)` gets the model's n outputs or its error."""
        self._queue.append((rows, waiter, part))
        self._start_calls()

    def _start_calls(self) -> None:
        while len(self._running) < self._max_in_flight * max(1, self._replicas()) and len(self._queue) > self._starting:
            started = time.perf_counter()
            self._running.append(started)
            self._starting += 1
            asyncio.get_running_loop().create_task(self._run(started))

    def _take_batch(self, share: int) -> list[tuple[np.ndarray, RowsWaiter, int]]:
        """Up to 1/`share` of the queue's entries (`share` calls start now), at most `max_rows` rows."""
        most = -(-len(self._queue) // share)
        batch, rows = [], 0
        while self._queue and len(batch) < most and (not batch or rows + len(self._queue[0][0]) <= self._max_rows):
            entry = self._queue.popleft()
            # Rows whose caller stopped waiting (past its deadline) are not sent.
            if entry[1].wanted():
                rows += len(entry[0])
                batch.append(entry)
        return batch

    async def _run(self, started: float) -> None:
        self._starting -= 1
        batch = self._take_batch(self._starting + 1)
        if not batch:  # every row queued was given up on meanwhile
            self._running.remove(started)
            return
        try:
            inputs = batch[0][0] if len(batch) == 1 else np.concatenate([rows for rows, _, _ in batch])
            async with asyncio.timeout(self._timeout_s):  # unlike wait_for, no extra task per call
                outputs = await self.call(inputs)
            if len(outputs) != len(inputs):
                raise ValueError(f"model returned {len(outputs)} outputs for {len(inputs)} inputs")
        except Exception as exc:  # noqa: BLE001 - every failure goes to the callers of this batch
            for _, waiter, part in batch:
                waiter.resolve(part, exc)
        else:
            offset = 0
            for rows, waiter, part in batch:
                waiter.resolve(part, outputs[offset : offset + len(rows)])
                offset += len(rows)
        finally:
            self._running.remove(started)
            self._last_call_s = time.perf_counter() - started
            self._start_calls()
