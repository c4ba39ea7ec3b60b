"""Fan-out without Ray: members are plain async functions."""
import asyncio
import time

import numpy as np

from ensemble.fanout import EnsemblePredictor
from ensemble.traffic import sticky_version


def constant(value: float, delay_s: float = 0.0):
    async def call(rows: np.ndarray) -> np.ndarray:
        await asyncio.sleep(delay_s)
        return np.full(len(rows), value, dtype=np.float32)

    return call


async def broken(rows: np.ndarray) -> np.ndarray:
    raise RuntimeError("member crashed")


def predictor(calls, splits=None, weights=None, deadline_s=0.5, member_timeout_s=None):
    splits = splits or {m: {next(iter(v)): 1.0} for m, v in calls.items()}
    weights = weights or {f"{m}-{v}": 1.0 for m, vs in calls.items() for v in vs}
    traffic = {m: {"split": split, "shadow": {}} for m, split in splits.items()}
    return EnsemblePredictor(calls, traffic, lambda: weights, deadline_s, max_rows=64, max_in_flight=2,
                             member_timeout_s=member_timeout_s)


WINDOWS = np.zeros((3, 128, 8), dtype=np.float32)


def test_weighted_answer_with_versions():
    ensemble = predictor({"a": {"v1": constant(1.0)}, "b": {"v1": constant(4.0)}},
                         weights={"a-v1": 2.0, "b-v1": 1.0})
    result = asyncio.run(ensemble.predict(WINDOWS, [None] * 3))
    np.testing.assert_allclose(result.combined, [2.0, 2.0, 2.0])
    answer = result.answers(["r0", "r1", "r2"])[1]
    assert answer["request_id"] == "r1" and not answer["degraded"] and answer["missing"] == []
    assert answer["members"]["a"] == {"version": "v1", "prediction": 1.0, "weight": 2 / 3}
    assert {o.status for o in result.outcomes} == {"ok"}


def test_failed_and_hung_members_degrade_the_answer_within_the_deadline():
    ensemble = predictor(
        {"good": {"v1": constant(3.0)}, "bad": {"v1": broken}, "slow": {"v1": constant(9.0, delay_s=5)}},
        deadline_s=0.1,
    )
    started = time.perf_counter()
    result = asyncio.run(ensemble.predict(WINDOWS, [None] * 3))
    assert time.perf_counter() - started < 1.0
    answer = result.answers(["a", "b", "c"])[0]
    assert answer["degraded"] and sorted(answer["missing"]) == ["bad", "slow"]
    assert answer["prediction"] == 3.0 and answer["members"]["good"]["weight"] == 1.0
    assert {o.model: o.status for o in result.outcomes} == {"good": "ok", "bad": "error", "slow": "timeout"}


def test_the_deadline_counts_from_the_requests_arrival():
    # A request that arrived 0.3 s ago (body read, validated) has only the rest of its 0.4 s.
    ensemble = predictor({"good": {"v1": constant(3.0)}, "slow": {"v1": constant(9.0, delay_s=0.25)}}, deadline_s=0.4)
    fresh = asyncio.run(ensemble.predict(WINDOWS, [None] * 3))
    late = asyncio.run(ensemble.predict(WINDOWS, [None] * 3, arrived=time.perf_counter() - 0.3))
    assert {o.model: o.status for o in fresh.outcomes} == {"good": "ok", "slow": "ok"}
    assert {o.model: o.status for o in late.outcomes} == {"good": "ok", "slow": "timeout"}


def test_no_member_answers_gives_nan():
    result = asyncio.run(predictor({"bad": {"v1": broken}}).predict(WINDOWS, [None] * 3))
    assert np.isnan(result.combined).all()


def test_non_finite_member_output_counts_as_error():
    result = asyncio.run(predictor({"a": {"v1": constant(np.nan)}, "b": {"v1": constant(1.0)}}).predict(WINDOWS, [None] * 3))
    assert result.answers(["x", "y", "z"])[0]["missing"] == ["a"]


def test_a_row_without_a_finite_prediction_leaves_that_member_out_of_its_instance_alone():
    async def overflows_on_the_second(rows: np.ndarray) -> np.ndarray:
        return np.array([1.0, np.inf, np.nan][:len(rows)], dtype=np.float32)

    result = asyncio.run(predictor({"a": {"v1": overflows_on_the_second}, "b": {"v1": constant(3.0)}})
                         .predict(WINDOWS, [None] * 3))
    answers = result.answers(["x", "y", "z"])
    assert [a["missing"] for a in answers] == [[], ["a"], ["a"]]
    np.testing.assert_allclose(result.combined, [2.0, 3.0, 3.0])
    assert {o.model: o.status for o in result.outcomes} == {"a": "error", "b": "ok"}


def test_instances_split_across_versions_by_key():
    ensemble = predictor({"m": {"v1": constant(1.0), "v2": constant(2.0)}}, splits={"m": {"v1": 0.5, "v2": 0.5}})
    keys = [f"k{i}" for i in range(40)]
    windows = np.zeros((40, 128, 8), dtype=np.float32)
    result = asyncio.run(ensemble.predict(windows, keys))
    versions = result.versions[0]
    assert set(versions) == {"v1", "v2"}
    np.testing.assert_allclose(result.combined, [1.0 if v == "v1" else 2.0 for v in versions])
    again = asyncio.run(ensemble.predict(windows, keys))
    assert again.versions[0] == versions
    assert result.member_predictions(0) == {f"m-{versions[0]}": 1.0 if versions[0] == "v1" else 2.0}


def test_shadow_is_mirrored_logged_and_never_waited_for():
    async def scenario() -> tuple[list, list, float]:
        outcomes: list = []
        ensemble = EnsemblePredictor(
            {"m": {"v1": constant(1.0), "v2": constant(2.0, delay_s=0.3)}},
            {"m": {"split": {"v1": 1.0}, "shadow": {"v2": 1.0}}},
            lambda: {"m-v1": 1.0, "m-v2": 1.0}, 1.0, max_rows=64, max_in_flight=2,
            on_shadow=outcomes.append, max_shadow_rows=4,
        )
        started = time.perf_counter()
        first = await ensemble.predict(WINDOWS, [None] * 3, ["a", "b", "c"])
        answered_s = time.perf_counter() - started
        second = await ensemble.predict(WINDOWS, [None] * 3, ["d", "e", "f"])  # 3 + 3 > 4 queued: dropped
        await asyncio.sleep(0.5)
        return [first, second], outcomes, answered_s

    results, outcomes, answered_s = asyncio.run(scenario())
    assert answered_s < 0.2  # the slow shadow did not delay the answer
    assert all(r.versions[0] == ["v1"] * 3 and r.combined == [1.0] * 3 for r in results)
    by_status = {o.status: o for o in outcomes}
    assert by_status["dropped"].request_ids == ["d", "e", "f"]
    assert by_status["ok"].request_ids == ["a", "b", "c"] and by_status["ok"].predictions.tolist() == [2.0] * 3


def test_shadow_share_is_sampled_and_skips_instances_already_on_that_version():
    outcomes: list = []

    async def scenario() -> None:
        ensemble = EnsemblePredictor(
            {"m": {"v1": constant(1.0), "v2": constant(2.0)}},
            {"m": {"split": {"v1": 0.5, "v2": 0.5}, "shadow": {"v2": 0.5}}},
            lambda: {}, 1.0, max_rows=4096, max_in_flight=2, on_shadow=outcomes.append, max_shadow_rows=4096,
        )
        keys = [f"k{i}" for i in range(2000)]
        result = await ensemble.predict(np.zeros((2000, 128, 8), dtype=np.float32), keys, keys)
        await asyncio.sleep(0.05)
        on_v1 = {k for k, v in zip(keys, result.versions[0]) if v == "v1"}
        mirrored = {rid for o in outcomes for rid in o.request_ids}
        assert mirrored <= on_v1 and abs(len(mirrored) / len(on_v1) - 0.5) < 0.06

    asyncio.run(scenario())


def test_past_the_deadline_the_first_late_answer_is_used():
    ensemble = EnsemblePredictor(
        {"slow": {"v1": constant(1.0, delay_s=0.2)}, "slower": {"v1": constant(2.0, delay_s=3.0)}},
        {"slow": {"split": {"v1": 1.0}}, "slower": {"split": {"v1": 1.0}}},
        lambda: {}, deadline_s=0.05, max_rows=64, max_in_flight=2, member_timeout_s=1.0,
    )
    started = time.perf_counter()
    result = asyncio.run(ensemble.predict(WINDOWS, [None] * 3))
    assert 0.15 < time.perf_counter() - started < 0.9  # the first late answer, not the slowest one
    answer = result.answers(["a", "b", "c"])[0]
    assert answer["prediction"] == 1.0 and answer["missing"] == ["slower"]
    assert {o.model: o.status for o in result.outcomes} == {"slow": "ok", "slower": "timeout"}


def test_rows_whose_caller_gave_up_are_not_sent():
    sent: list[int] = []

    async def call(rows: np.ndarray) -> np.ndarray:
        sent.append(len(rows))
        await asyncio.sleep(0.05)
        return np.zeros(len(rows), dtype=np.float32)

    async def scenario() -> None:
        from ensemble.batching import CoalescingBatcher

        batcher = CoalescingBatcher(call, max_rows=64, max_in_flight=1, timeout_s=1.0)
        first = batcher.submit(np.zeros((2, 1)))
        await asyncio.sleep(0)  # its call starts; the next two queue behind it
        abandoned = batcher.submit(np.zeros((3, 1)))
        kept = batcher.submit(np.zeros((4, 1)))
        abandoned.cancel()
        await asyncio.gather(first, kept)

    asyncio.run(scenario())
    assert sent == [2, 4]


def test_rows_queued_past_the_deadline_or_for_a_cancelled_request_are_never_sent():
    sent: list[int] = []

    async def slow(rows: np.ndarray) -> np.ndarray:
        sent.append(len(rows))
        await asyncio.sleep(0.3)
        return np.zeros(len(rows), dtype=np.float32)

    async def scenario() -> None:
        calls = {"fast": {"v1": constant(1.0)}, "slow": {"v1": slow}}
        ensemble = EnsemblePredictor(calls, {m: {"split": {"v1": 1.0}, "shadow": {}} for m in calls},
                                     lambda: {"fast-v1": 1.0, "slow-v1": 1.0}, 0.05, max_rows=64, max_in_flight=1)
        first = asyncio.ensure_future(ensemble.predict(np.zeros((1, 4, 2)), [None]))
        await asyncio.sleep(0)  # the slow member's first call is out; later rows queue behind it
        expired = asyncio.ensure_future(ensemble.predict(np.zeros((2, 4, 2)), [None] * 2))
        cancelled = asyncio.ensure_future(ensemble.predict(np.zeros((3, 4, 2)), [None] * 3))
        await asyncio.sleep(0)
        cancelled.cancel()
        results = await asyncio.gather(first, expired, cancelled, return_exceptions=True)
        for result in results[:2]:
            assert {o.model: o.status for o in result.outcomes} == {"fast": "ok", "slow": "timeout"}
        assert isinstance(results[2], asyncio.CancelledError)
        await asyncio.sleep(0.4)  # the slow call's slot frees: nothing queued is left to send

    asyncio.run(scenario())
    assert sent == [1]


def test_a_member_whose_calls_outlast_the_deadline_is_not_waited_for_until_it_is_in_time_again():
    stall = {"s": 0.5}

    async def stalling(rows: np.ndarray) -> np.ndarray:
        await asyncio.sleep(stall["s"])
        return np.full(len(rows), 9.0, dtype=np.float32)

    async def timed(ensemble: EnsemblePredictor) -> tuple[float, dict[str, str]]:
        started = time.perf_counter()
        result = await ensemble.predict(WINDOWS, [None] * 3)
        return time.perf_counter() - started, {o.model: o.status for o in result.outcomes}

    async def scenario() -> list[tuple[float, dict[str, str]]]:
        ensemble = predictor({"good": {"v1": constant(3.0, delay_s=0.01)}, "stalled": {"v1": stalling}},
                             deadline_s=0.1, member_timeout_s=1.0)
        seen = [await timed(ensemble)]  # no call has shown the stall yet: waits the deadline
        await asyncio.sleep(0.15)
        seen += [await timed(ensemble) for _ in range(3)]  # its first call has run past two deadlines
        stall["s"] = 0.0  # recovers
        await asyncio.sleep(0.6)  # the stalled calls finish, having taken 0.5 s
        seen += [await timed(ensemble) for _ in range(3)]
        return seen

    seen = asyncio.run(scenario())
    assert seen[0][1] == {"good": "ok", "stalled": "timeout"} and seen[0][0] >= 0.1
    for elapsed, statuses in seen[1:4]:
        assert statuses == {"good": "ok", "stalled": "lagging"} and elapsed < 0.08  # not held to the deadline
    # Its last call took 0.5 s, so the next request does not wait for it, but that request's own
    # call is in time: from then on the member is waited for again.
    assert seen[-1][1] == {"good": "ok", "stalled": "ok"}


def test_a_lagging_member_gets_one_request_s_rows_per_call_not_every_request_s():
    sent = []

    async def stalling(rows: np.ndarray) -> np.ndarray:
        sent.append(len(rows))
        await asyncio.sleep(0.3)
        return np.zeros(len(rows), dtype=np.float32)

    async def scenario() -> tuple[int, set[str]]:
        ensemble = predictor({"good": {"v1": constant(3.0, delay_s=0.02)}, "stalled": {"v1": stalling}},
                             deadline_s=0.1, member_timeout_s=1.0)
        await ensemble.predict(WINDOWS, [None] * 3)  # its first call is in flight from here
        await asyncio.sleep(0.15)  # ... for more than two deadlines: it lags
        requests = [asyncio.create_task(ensemble.predict(WINDOWS, [None] * 3)) for _ in range(20)]
        await asyncio.sleep(0)  # every request has queued its rows
        queued = ensemble._batchers[("stalled", "v1")].queued
        results = await asyncio.gather(*requests)
        return queued, {o.status for r in results for o in r.outcomes if o.model == "stalled"}

    queued, statuses = asyncio.run(scenario())
    # Its second slot took the first lagging request's rows; one more waits for a slot, not twenty.
    assert (sent, queued, statuses) == ([3, 3], 1, {"lagging"})


def test_when_the_members_waited_for_fail_a_lagging_member_s_late_answer_still_comes():
    async def stalling(rows: np.ndarray) -> np.ndarray:
        await asyncio.sleep(0.3)
        return np.full(len(rows), 9.0, dtype=np.float32)

    async def scenario() -> list[list[float]]:
        ensemble = predictor({"broken": {"v1": broken}, "stalled": {"v1": stalling}}, deadline_s=0.1, member_timeout_s=2.0)
        await ensemble.predict(WINDOWS, [None] * 3)  # waits 0.3 s for the stalled answer: it lags
        # Two requests' rows take its two slots, one waits in its queue, three are held back.
        results = await asyncio.gather(*(ensemble.predict(WINDOWS, [None] * 3) for _ in range(6)))
        return [r.combined for r in results]

    started = time.perf_counter()
    assert asyncio.run(scenario()) == [[9.0] * 3] * 6
    assert time.perf_counter() - started < 1.5  # answered by the stalled member, not given up at 2 s


def test_a_member_slower_than_the_deadline_but_not_lagging_is_still_waited_for():
    async def scenario() -> dict[str, str]:
        calls = {"good": {"v1": constant(3.0)}, "slow": {"v1": constant(9.0, delay_s=0.15)}}
        ensemble = predictor(calls, deadline_s=0.1, member_timeout_s=1.0)
        await ensemble.predict(WINDOWS, [None] * 3)
        await asyncio.sleep(0.1)  # its call took 0.15 s: past the deadline, within two
        result = await ensemble.predict(WINDOWS, [None] * 3)
        return {o.model: o.status for o in result.outcomes}

    assert asyncio.run(scenario()) == {"good": "ok", "slow": "timeout"}  # waited the deadline for it


def test_when_every_member_lags_all_are_waited_for_until_the_deadline():
    delays = {"a": 0.25, "b": 0.25}

    def member(name: str):
        async def call(rows: np.ndarray) -> np.ndarray:
            await asyncio.sleep(delays[name])
            return np.ones(len(rows), dtype=np.float32)

        return call

    async def scenario() -> dict[str, str]:
        calls = {"a": {"v1": member("a")}, "b": {"v1": member("b")}}
        ensemble = predictor(calls, deadline_s=0.1, member_timeout_s=1.0)
        await ensemble.predict(WINDOWS, [None] * 3)  # both calls take 0.25 s: past two deadlines
        await asyncio.sleep(0.3)
        delays.update(a=0.01, b=0.05)
        result = await ensemble.predict(WINDOWS, [None] * 3)
        return {o.model: o.status for o in result.outcomes}

    # Not waiting for lagging members here would answer with a alone.
    assert asyncio.run(scenario()) == {"a": "ok", "b": "ok"}


def test_an_unanswered_lagging_member_reports_how_long_its_calls_take():
    async def scenario():
        calls = {"good": {"v1": constant(3.0)}, "slow": {"v1": constant(9.0, delay_s=0.4)}}
        ensemble = predictor(calls, deadline_s=0.05, member_timeout_s=1.0)
        await ensemble.predict(WINDOWS, [None] * 3)
        await asyncio.sleep(0.2)  # the slow call has run 0.25 s by the next request
        return await ensemble.predict(WINDOWS, [None] * 3)

    slow = next(o for o in asyncio.run(scenario()).outcomes if o.model == "slow")
    assert slow.status == "lagging" and slow.latency_s >= 0.25


def test_traffic_for_versions_the_predictor_does_not_call_leaves_their_members_as_they_were():
    # In a deploy that replaces v1 by v2, the new control plane routes xgboost to v2 while the
    # old router replica, which calls only v1, still serves.
    ensemble = predictor({"xgboost": {"v1": constant(1.0)}, "lstm": {"v1": constant(2.0), "v2": constant(4.0)}})
    kept = ensemble.set_traffic({"xgboost": {"split": {"v2": 1.0}, "shadow": {"v2": 0.5}},
                                 "lstm": {"split": {"v1": 0.0, "v2": 1.0, "v3": 3.0}, "shadow": {"v3": 1.0}}})
    assert kept == ["xgboost"]
    assert ensemble.traffic() == {"xgboost": {"split": {"v1": 1.0}, "shadow": {}},
                                  "lstm": {"split": {"v1": 0.0, "v2": 1.0}, "shadow": {}}}
    answer = asyncio.run(ensemble.predict(WINDOWS, ["k0", "k1", "k2"])).answers(["a", "b", "c"])[0]
    assert {m: a["version"] for m, a in answer["members"].items()} == {"xgboost": "v1", "lstm": "v2"}
    assert not answer["degraded"]


def test_an_instance_no_member_can_predict_for_is_the_inputs_fault_not_the_members():
    async def overflows_on_the_second(rows: np.ndarray) -> np.ndarray:
        return np.array([1.0, np.inf, 2.0][:len(rows)], dtype=np.float32)

    nets = predictor({"a": {"v1": overflows_on_the_second}, "b": {"v1": overflows_on_the_second}})
    result = asyncio.run(nets.predict(WINDOWS, [None] * 3))
    assert result.refusal(single=False) == (
        422, "instances[1].window: no member gives a prediction for it (its values are far beyond what the models "
             "take)")
    assert {o.status for o in result.counted_outcomes(result.refusal(single=False))} == {"ok"}  # no canary error
    failing = asyncio.run(predictor({"a": {"v1": overflows_on_the_second}, "b": {"v1": broken}})
                          .predict(WINDOWS, [None] * 3))
    refusal = failing.refusal(single=False)
    assert refusal == (503, "no member answered (a-v1: error, b-v1: error)")
    assert failing.counted_outcomes(refusal) == failing.outcomes
    fine = asyncio.run(predictor({"a": {"v1": constant(1.0)}}).predict(WINDOWS, [None] * 3))
    assert fine.refusal(single=True) is None


def keys_per_version(split: dict[str, float]) -> dict[str, str]:
    keys = [f"k{i}" for i in range(100)]
    return {version: next(k for k in keys if sticky_version(k, split) == version) for version in split}


def test_instances_of_one_request_on_different_versions_each_wait_for_their_own_answer():
    """One version's answer for its instances says nothing of the other's: the batch waits, as
    either instance alone would, for the first late answer of its slow version."""
    split = {"v1": 0.5, "v2": 0.5}
    key = keys_per_version(split)
    delay = {"v1": 0.15}

    async def slow(rows: np.ndarray) -> np.ndarray:
        await asyncio.sleep(delay["v1"])
        return np.full(len(rows), 1.0, dtype=np.float32)

    ensemble = predictor({"m": {"v1": slow, "v2": constant(2.0, delay_s=0.01)}}, splits={"m": split},
                         deadline_s=0.1, member_timeout_s=2.0)

    async def scenario() -> tuple:
        past_deadline = await ensemble.predict(WINDOWS[:2], [key["v2"], key["v1"]])
        delay["v1"] = 0.3
        await ensemble.predict(WINDOWS[:1], [key["v1"]])  # a call past two deadlines: v1 now lags
        delay["v1"] = 0.03  # and is in time again
        lagging = await ensemble.predict(WINDOWS[:2], [key["v2"], key["v1"]])
        return past_deadline, lagging

    for result in asyncio.run(scenario()):
        assert result.combined == [2.0, 1.0] and result.refusal(single=False) is None
