"""The coalescing batcher: no wait when idle, merging under load, errors and timeouts per batch."""
import asyncio
import time

import numpy as np
import pytest

from ensemble.batching import CoalescingBatcher


class RecordingModel:
    def __init__(self, delay_s: float = 0.0, fail: bool = False) -> None:
        self.calls: list[int] = []
        self.delay_s, self.fail = delay_s, fail

    async def __call__(self, rows: np.ndarray) -> np.ndarray:
        self.calls.append(len(rows))
        await asyncio.sleep(self.delay_s)
        if self.fail:
            raise RuntimeError("model broke")
        return rows.sum(axis=1)


def run(coro):
    return asyncio.run(coro)


def test_lone_request_goes_at_once_and_results_map_back():
    async def scenario():
        model = RecordingModel()
        batcher = CoalescingBatcher(model, max_rows=64, max_in_flight=1, timeout_s=1.0)
        out = await batcher.submit(np.ones((3, 2)))
        return model.calls, out

    calls, out = run(scenario())
    assert calls == [3]
    np.testing.assert_allclose(out, [2, 2, 2])


def test_requests_of_one_turn_and_those_queued_during_a_call_leave_together_in_order():
    async def scenario():
        model = RecordingModel(delay_s=0.01)
        batcher = CoalescingBatcher(model, max_rows=64, max_in_flight=1, timeout_s=1.0)
        futures = [batcher.submit(np.full((1, 2), i, dtype=float)) for i in range(10)]
        await asyncio.sleep(0)  # the call starts with all ten
        futures += [batcher.submit(np.full((1, 2), i, dtype=float)) for i in range(10, 13)]
        return model.calls, [float(f[0]) for f in await asyncio.gather(*futures)]

    calls, outs = run(scenario())
    assert calls == [10, 3]
    assert outs == [2.0 * i for i in range(13)]


def test_calls_that_start_together_share_the_queue():
    async def scenario():
        model = RecordingModel(delay_s=0.01)
        batcher = CoalescingBatcher(model, max_rows=64, max_in_flight=2, timeout_s=1.0)
        await asyncio.gather(*[batcher.submit(np.ones((1, 2))) for _ in range(9)])
        return sorted(model.calls)

    assert run(scenario()) == [4, 5]


def test_max_rows_caps_a_call():
    async def scenario():
        model = RecordingModel(delay_s=0.01)
        batcher = CoalescingBatcher(model, max_rows=4, max_in_flight=1, timeout_s=1.0)
        await asyncio.gather(*[batcher.submit(np.ones((1, 2))) for _ in range(9)])
        return model.calls

    assert run(scenario()) == [4, 4, 1]


def test_failure_reaches_every_caller_of_that_batch_only():
    async def scenario():
        model = RecordingModel(fail=True)
        batcher = CoalescingBatcher(model, max_rows=8, max_in_flight=1, timeout_s=1.0)
        results = await asyncio.gather(*[batcher.submit(np.ones((1, 2))) for _ in range(3)], return_exceptions=True)
        model.fail = False
        return results, await batcher.submit(np.ones((1, 2)))

    results, later = run(scenario())
    assert all(isinstance(r, RuntimeError) for r in results)
    np.testing.assert_allclose(later, [2.0])


def test_hung_call_times_out_and_frees_its_slot():
    async def scenario():
        model = RecordingModel(delay_s=10)
        batcher = CoalescingBatcher(model, max_rows=8, max_in_flight=1, timeout_s=0.05)
        with pytest.raises(asyncio.TimeoutError):
            await batcher.submit(np.ones((1, 2)))
        model.delay_s = 0
        return await batcher.submit(np.ones((1, 2)))

    np.testing.assert_allclose(run(scenario()), [2.0])


def test_call_time_is_the_last_calls_or_the_running_calls_age():
    async def scenario():
        model = RecordingModel(delay_s=0.05)
        batcher = CoalescingBatcher(model, max_rows=8, max_in_flight=1, timeout_s=1.0)
        assert batcher.call_time(time.perf_counter()) == 0.0
        await batcher.submit(np.ones((1, 2)))
        finished = batcher.call_time(time.perf_counter())
        model.delay_s = 0.3
        pending = batcher.submit(np.ones((1, 2)))
        await asyncio.sleep(0.15)
        running = batcher.call_time(time.perf_counter())
        await pending
        return finished, running, batcher.call_time(time.perf_counter())

    finished, running, last = run(scenario())
    assert 0.05 <= finished < 0.15 and 0.15 <= running < 0.3 and last >= 0.3


def test_calls_in_flight_follow_the_replicas_the_model_runs():
    async def scenario():
        release = asyncio.Event()
        started = []

        async def model(rows: np.ndarray) -> np.ndarray:
            started.append(len(rows))
            await release.wait()
            return rows.sum(axis=1)

        replicas = [1]
        batcher = CoalescingBatcher(model, max_rows=1, max_in_flight=1, timeout_s=5.0, replicas=lambda: replicas[0])
        futures = [batcher.submit(np.ones((1, 2), dtype=np.float32)) for _ in range(3)]
        await asyncio.sleep(0)
        assert len(started) == 1  # one replica: one call at a time
        replicas[0] = 2  # the member scaled out
        futures.append(batcher.submit(np.ones((1, 2), dtype=np.float32)))
        await asyncio.sleep(0)
        assert len(started) == 2
        release.set()
        assert [float(f[0]) for f in await asyncio.gather(*futures)] == [2.0] * 4

    run(scenario())
