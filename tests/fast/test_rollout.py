"""Canary rollouts, traffic changes and their persistence, on a real SQLite file (no Ray)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from ensemble.admin import admin_token, authorise
from ensemble.ledger import Ledger, LedgerSpec
from ensemble.rollout import CallStats, Rollout, RolloutPlan, VersionWindow, latency_bucket
from ensemble.store import StateStore, StateStoreError, StateStoreSuperseded
from ensemble.traffic import ChangeRejected
from ensemble.traffic_control import (HISTORY_PER_MEMBER, Declared, TrafficChange, TrafficController,
                                      shares_to_publish)
from ensemble.trust import TrustBook, TrustSpec
from tests.store_lock import write_locked

PLAN = RolloutPlan(canary="v2", steps=[10, 50, 100], interval_s=10, min_requests=20, min_labels=20,
                   error_tolerance=0.1, max_error_rate=0.05, max_p99_latency_s=0.2)
DECLARED = {"patchtst": Declared(("v1", "v2"), {"v1": 1.0}, {}, None),
            "lstm": Declared(("v1",), {"v1": 1.0}, {}, None)}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def controller(path: Path, clock: Clock, declared: dict[str, Declared] = DECLARED) -> TrafficController:
    return TrafficController(StateStore(f"sqlite:///{path}"), declared, clock)


def feed(control: TrafficController, canary_error: float, stable_error: float = 0.01, n: int = 40,
         latency_s: float = 0.005, failed: int = 0, stable_failed: int = 0) -> None:
    """One step's worth of evidence: calls from a router and labels joined by the ledger."""
    stats = CallStats()
    stats.add("patchtst-v1", n - stable_failed, False, latency_s)
    if stable_failed:
        stats.add("patchtst-v1", stable_failed, True, latency_s)
    stats.add("patchtst-v2", n - failed, False, latency_s)
    if failed:
        stats.add("patchtst-v2", failed, True, latency_s)
    control.observe_calls(stats.drain())
    rng = np.random.default_rng(0)
    noise = rng.normal(size=n)
    control.observe_labels([({"patchtst-v1": 0.0}, stable_error**0.5 * z) for z in noise])
    control.observe_labels([({"patchtst-v2": 0.0}, canary_error**0.5 * z) for z in noise])


def walk(control: TrafficController, clock: Clock, canary_error: float, steps: int = 5) -> list[dict[str, float]]:
    """Feed evidence and let the step interval pass, `steps` times; the splits seen after each tick."""
    splits = []
    for _ in range(steps):
        feed(control, canary_error)
        clock.now += PLAN.interval_s
        control.tick()
        splits.append(control.snapshot()["patchtst"]["split"])
    return splits


def test_good_canary_is_promoted_through_every_step(tmp_path: Path):
    clock = Clock()
    control = controller(tmp_path / "s.db", clock)
    control.start_rollout("patchtst", PLAN)
    assert control.snapshot()["patchtst"]["split"] == {"v1": 0.9, "v2": pytest.approx(0.1)}
    splits = walk(control, clock, canary_error=0.01)
    assert [s["v2"] for s in splits[:3]] == pytest.approx([0.5, 1.0, 1.0])
    rollout = control.rollouts["patchtst"]
    assert rollout.status == "promoted" and "every step passed" in rollout.reason
    kinds = [e["kind"] for e in control.report()["patchtst"]["history"]]
    assert kinds == ["rollout.started", "rollout.advanced", "rollout.advanced", "rollout.promoted"]


def test_each_member_reports_its_own_newest_history(tmp_path: Path):
    control = controller(tmp_path / "s.db", Clock())
    control.set_traffic("lstm", TrafficChange(shadow={}))
    for i in range(1000):  # a script busy with patchtst's split
        control.set_traffic("patchtst", TrafficChange(split={"v1": 1 - i % 2, "v2": i % 2}))
    report = control.report()
    assert [e["detail"]["reason"] for e in report["lstm"]["history"]] == ["set through the admin API"]
    history = report["patchtst"]["history"]
    assert len(history) == HISTORY_PER_MEMBER and history[-1]["detail"]["split"] == {"v1": 0, "v2": 1}


def test_bad_canary_is_rolled_back_at_the_first_gate(tmp_path: Path):
    clock = Clock()
    control = controller(tmp_path / "s.db", clock)
    control.start_rollout("patchtst", PLAN)
    splits = walk(control, clock, canary_error=0.05, steps=1)
    assert splits == [{"v1": 1.0, "v2": 0.0}]
    rollout = control.rollouts["patchtst"]
    assert rollout.status == "rolled_back" and rollout.step == 0 and "canary MSE" in rollout.reason


def test_errors_and_latency_roll_back_without_waiting_for_labels(tmp_path: Path):
    clock = Clock()
    control = controller(tmp_path / "s.db", clock)
    control.start_rollout("patchtst", PLAN)
    feed(control, 0.01, failed=5)  # 12.5% failures
    control.tick()
    assert control.rollouts["patchtst"].status == "rolled_back"
    assert "error rate" in control.rollouts["patchtst"].reason
    control.start_rollout("patchtst", PLAN)
    feed(control, 0.01, latency_s=0.4)
    control.tick()
    assert "p99 latency" in control.rollouts["patchtst"].reason


def test_errors_that_the_stable_version_makes_as_often_do_not_roll_back(tmp_path: Path):
    """Windows every version fails on (values far beyond the training data's) are the input's
    failures, not the canary's: only the canary's error rate beyond the stable's counts, and the
    stable's only on as many requests as the canary needs."""
    clock = Clock()
    control = controller(tmp_path / "s.db", clock)
    control.start_rollout("patchtst", PLAN)
    feed(control, 0.01, failed=5, stable_failed=5)  # 12.5% each
    clock.now += PLAN.interval_s
    control.tick()
    assert control.rollouts["patchtst"].status == "progressing" and control.rollouts["patchtst"].step == 1
    feed(control, 0.01, failed=5, stable_failed=2)  # 12.5% against 5%: 7.5 points beyond, over the 5 allowed
    control.tick()
    rollout = control.rollouts["patchtst"]
    assert rollout.status == "rolled_back" and "0.1250 > stable's 0.0500 + 0.05" in rollout.reason
    control.start_rollout("patchtst", PLAN)
    stats = CallStats()
    stats.add("patchtst-v1", PLAN.min_requests - 1, True, 0.005)  # all failed, but too few to compare with
    stats.add("patchtst-v2", PLAN.min_requests, True, 0.005)
    control.observe_calls(stats.drain())
    control.tick()
    rollout = control.rollouts["patchtst"]
    assert rollout.status == "rolled_back" and "stable's 0.0000" in rollout.reason


def test_waits_for_interval_and_evidence(tmp_path: Path):
    clock = Clock()
    control = controller(tmp_path / "s.db", clock)
    control.start_rollout("patchtst", PLAN)
    feed(control, 0.01)
    control.tick()  # enough evidence, interval not over
    assert control.rollouts["patchtst"].step == 0 and "interval" in control.rollouts["patchtst"].reason
    clock.now += 100
    control.tick()
    assert control.rollouts["patchtst"].step == 1
    clock.now += 100
    control.tick()  # interval over, no evidence in the new step
    assert control.rollouts["patchtst"].step == 1 and "canary labels 0/20" in control.rollouts["patchtst"].reason


def test_pause_resume_promote_rollback_by_hand(tmp_path: Path):
    clock = Clock()
    control = controller(tmp_path / "s.db", clock)
    control.start_rollout("patchtst", PLAN)
    control.act("patchtst", "pause")
    walk(control, clock, canary_error=0.01, steps=2)
    assert control.rollouts["patchtst"].step == 0  # a paused rollout neither learns nor moves
    control.act("patchtst", "resume")
    control.act("patchtst", "promote")
    assert control.snapshot()["patchtst"]["split"] == {"v1": 0.0, "v2": 1.0}
    with pytest.raises(ChangeRejected, match="has ended"):
        control.act("patchtst", "rollback")
    control.start_rollout("patchtst", RolloutPlan(canary="v1"))  # and back again, v2 now stable
    control.act("patchtst", "rollback")
    assert control.snapshot()["patchtst"]["split"] == {"v1": 0.0, "v2": 1.0}


def test_state_and_history_survive_a_restart(tmp_path: Path):
    clock = Clock()
    control = controller(tmp_path / "s.db", clock)
    control.start_rollout("patchtst", PLAN)
    walk(control, clock, canary_error=0.01, steps=1)
    feed(control, 0.01)  # half a step of evidence, not yet judged
    control.tick()
    before = control.report()
    again = controller(tmp_path / "s.db", clock)
    assert again.report() == before
    assert again.snapshot() == control.snapshot()
    walk(again, clock, canary_error=0.01, steps=3)
    assert again.rollouts["patchtst"].status == "promoted"


@pytest.mark.parametrize(
    "member, change, message",
    [
        ("patchtst", TrafficChange(split={"v1": 0.5, "v2": 0.6}), "sum to 1"),
        ("patchtst", TrafficChange(split={"v1": -0.5, "v2": 1.5}), ">= 0"),
        ("patchtst", TrafficChange(split={"v1": 0.5, "v9": 0.5}), "not deployed"),
        ("patchtst", TrafficChange(shadow={"v2": 1.5}), r"\[0, 1\]"),
        ("patchtst", TrafficChange(shadow={"v3": 0.5}), "not deployed"),
        ("nobody", TrafficChange(split={"v1": 1.0}), "unknown member"),
    ],
)
def test_invalid_changes_are_rejected_and_change_nothing(tmp_path: Path, member, change, message):
    control = controller(tmp_path / "s.db", Clock())
    before = control.snapshot()
    with pytest.raises(ChangeRejected, match=message) as caught:
        control.set_traffic(member, change)
    assert not caught.value.conflict and control.snapshot() == before
    assert controller(tmp_path / "s.db", Clock()).snapshot() == before


def test_rollout_blocks_manual_splits_and_bad_starts(tmp_path: Path):
    control = controller(tmp_path / "s.db", Clock())
    with pytest.raises(ChangeRejected, match="not a deployed version"):
        control.start_rollout("patchtst", RolloutPlan(canary="v7"))
    with pytest.raises(ChangeRejected, match="stable version"):
        control.start_rollout("patchtst", RolloutPlan(canary="v1"))  # v1 holds all traffic: no stable left
    control.start_rollout("patchtst", PLAN)
    with pytest.raises(ChangeRejected) as caught:
        control.set_traffic("patchtst", TrafficChange(split={"v1": 1.0}))
    assert caught.value.conflict
    control.set_traffic("patchtst", TrafficChange(shadow={"v2": 0.5}))  # shadows stay free


def test_admin_changes_persist_until_the_config_declares_otherwise(tmp_path: Path):
    clock = Clock()
    controller(tmp_path / "s.db", clock).set_traffic("patchtst", TrafficChange(split={"v1": 0.7, "v2": 0.3}))
    assert controller(tmp_path / "s.db", clock).snapshot()["patchtst"]["split"] == {"v1": 0.7, "v2": 0.3}
    redeclared = {**DECLARED, "patchtst": Declared(("v1", "v2"), {"v1": 0.5, "v2": 0.5}, {"v2": 0.1}, None)}
    changed = controller(tmp_path / "s.db", clock, redeclared)
    assert changed.snapshot()["patchtst"] == {"split": {"v1": 0.5, "v2": 0.5}, "shadow": {"v2": 0.1}}


def test_declared_rollout_starts_once_and_resumes(tmp_path: Path):
    clock = Clock()
    declared = {**DECLARED, "patchtst": Declared(("v1", "v2"), {"v1": 1.0}, {}, PLAN)}
    first = controller(tmp_path / "s.db", clock, declared)
    assert first.rollouts["patchtst"].status == "progressing"
    first.act("patchtst", "rollback")
    # Redeploying the same config does not start it again: the operator's rollback stands.
    assert controller(tmp_path / "s.db", clock, declared).rollouts["patchtst"].status == "rolled_back"


def test_a_rollout_the_config_no_longer_declares_takes_its_split_with_it(tmp_path: Path):
    clock = Clock()
    declared = {**DECLARED, "patchtst": Declared(("v1", "v2"), {"v1": 1.0}, {}, PLAN)}
    walk(controller(tmp_path / "s.db", clock, declared), clock, canary_error=0.01, steps=1)  # now at 50%
    again = controller(tmp_path / "s.db", clock)  # the same config without the rollout
    assert "patchtst" not in again.rollouts and again.snapshot()["patchtst"]["split"] == {"v1": 1.0}
    assert again.report()["patchtst"]["history"][-1]["detail"]["reason"] == \
        "the graph config no longer declares the rollout under way"


def test_a_rollout_that_ended_leaves_its_split_when_the_config_drops_it(tmp_path: Path):
    clock = Clock()
    declared = {**DECLARED, "patchtst": Declared(("v1", "v2"), {"v1": 1.0}, {}, PLAN)}
    control = controller(tmp_path / "s.db", clock, declared)
    walk(control, clock, canary_error=0.01)
    assert control.rollouts["patchtst"].status == "promoted"
    again = controller(tmp_path / "s.db", clock)  # the rollout block removed, the traffic left as it was
    assert again.snapshot()["patchtst"]["split"] == {"v1": 0.0, "v2": 1.0}



def test_a_changed_rollout_block_after_promotion_neither_reverts_traffic_nor_stops_the_control_plane(tmp_path: Path):
    clock = Clock()
    declared = {**DECLARED, "patchtst": Declared(("v1", "v2"), {"v1": 1.0}, {}, PLAN)}
    control = controller(tmp_path / "s.db", clock, declared)
    walk(control, clock, canary_error=0.01)
    assert control.snapshot()["patchtst"]["split"] == {"v1": 0.0, "v2": 1.0}
    # The operator edits the rollout block: v1 serves nothing, so there is nothing to roll from.
    edited = {**DECLARED, "patchtst": Declared(("v1", "v2"), {"v1": 1.0}, {}, PLAN.model_copy(update={"interval_s": 30}))}
    again = controller(tmp_path / "s.db", clock, edited)
    assert again.snapshot()["patchtst"]["split"] == {"v1": 0.0, "v2": 1.0}
    assert "patchtst" not in again.rollouts
    last = again.report()["patchtst"]["history"][-1]
    assert last["kind"] == "rollout.not_started" and "serves traffic" in last["detail"]["reason"]
    # Where an admin's split leaves v1 out altogether, the same: the control plane starts.
    again.set_traffic("patchtst", TrafficChange(split={"v2": 1.0}))
    assert controller(tmp_path / "s.db", clock, edited).snapshot()["patchtst"]["split"] == {"v2": 1.0}


def test_an_admin_rollout_needs_a_stable_version_that_serves_traffic(tmp_path: Path):
    control = controller(tmp_path / "s.db", Clock())
    control.set_traffic("patchtst", TrafficChange(split={"v1": 0.0, "v2": 1.0}))
    three = {**DECLARED, "patchtst": Declared(("v1", "v2", "v3"), {"v1": 1.0}, {}, None)}
    for control, canary, stable in ((control, "v2", None), (control, "v2", "v1"),
                                    (controller(tmp_path / "t.db", Clock(), three), "v2", "v3")):
        before = control.snapshot()
        with pytest.raises(ChangeRejected, match="serves traffic") as caught:
            control.start_rollout("patchtst", PLAN.model_copy(update={"canary": canary}), stable)
        assert not caught.value.conflict and control.snapshot() == before
    # By default the version serving most of the rest is the stable one.
    control = controller(tmp_path / "u.db", Clock(), three)
    control.set_traffic("patchtst", TrafficChange(split={"v1": 0.3, "v2": 0.0, "v3": 0.7}))
    control.start_rollout("patchtst", PLAN)
    assert control.rollouts["patchtst"].stable == "v3"

def test_labels_a_rollout_learned_from_survive_a_restart_before_its_tick(tmp_path: Path):
    """The rollout's windows are saved with the labels, which are then applied for good."""
    clock = Clock()

    def plane() -> tuple[TrafficController, Ledger]:
        control = controller(tmp_path / "s.db", clock)
        trust = TrustBook(TrustSpec(), {"patchtst-v1": 1.0, "patchtst-v2": 1.0, "lstm-v1": 1.0})
        ledger = Ledger(StateStore(f"sqlite:///{tmp_path / 's.db'}"), trust, LedgerSpec(), clock, observer=control)
        return control, ledger

    control, ledger = plane()
    control.start_rollout("patchtst", PLAN)
    ledger.record([(f"r{i}", clock.now, {"patchtst-v2": 0.0}) for i in range(30)])
    assert ledger.feedback([(f"r{i}", 0.1) for i in range(30)]).applied == 30
    control, ledger = plane()  # stopped before the control plane's next tick
    assert control.rollouts["patchtst"].canary_window.labels == 30
    assert ledger.feedback([("r0", 0.1)]).duplicate == 1



def test_one_label_in_the_wrong_unit_counts_at_trusts_bound_in_the_mse_gate(tmp_path: Path):
    """A percent sent for a fraction on one stable request: unbounded, its squared residual (144)
    outweighed a canary a hundred times worse; at trust's bound (ten of the labels' deviations)
    it does not."""
    clock = Clock()
    control = controller(tmp_path / "s.db", clock)
    trust = TrustBook(TrustSpec(), {"patchtst-v1": 1.0, "patchtst-v2": 1.0, "lstm-v1": 1.0})
    ledger = Ledger(StateStore(f"sqlite:///{tmp_path / 's.db'}"), trust, LedgerSpec(), clock, observer=control)
    control.start_rollout("patchtst", PLAN.model_copy(update={"min_labels": 100}))
    noise = np.random.default_rng(0).normal(size=100)
    for version, spread in (("v1", 0.01), ("v2", 0.1)):
        ledger.record([(f"{version}-{i}", clock.now, {f"patchtst-{version}": 0.0}) for i in range(100)])
        ledger.feedback([(f"{version}-{i}", spread * z) for i, z in enumerate(noise)])
    ledger.record([("wrong-unit", clock.now, {"patchtst-v1": 0.0})])
    ledger.feedback([("wrong-unit", 12.0)])
    stats = CallStats()
    stats.add("patchtst-v1", 100, False, 0.005)
    stats.add("patchtst-v2", 100, False, 0.005)
    control.observe_calls(stats.drain())
    clock.now += PLAN.interval_s
    control.tick()
    assert control.rollouts["patchtst"].status == "rolled_back"
    assert "MSE" in control.rollouts["patchtst"].reason

def test_a_change_the_store_failed_to_keep_is_not_served(tmp_path: Path):
    """Admin changes and the tick's transitions hold in memory only once the store has them."""
    clock = Clock()
    control = TrafficController(StateStore(f"sqlite:///{tmp_path / 's.db'}?timeout=0.05"), DECLARED, clock)
    with write_locked(tmp_path / "s.db"):
        with pytest.raises(StateStoreError):
            control.set_traffic("patchtst", TrafficChange(split={"v1": 0.5, "v2": 0.5}))
        with pytest.raises(StateStoreError):
            control.start_rollout("patchtst", PLAN)
    assert control.snapshot()["patchtst"]["split"] == {"v1": 1.0} and control.rollouts == {}
    control.start_rollout("patchtst", PLAN)
    with write_locked(tmp_path / "s.db"), pytest.raises(StateStoreError):
        control.act("patchtst", "pause")
    assert control.rollouts["patchtst"].status == "progressing"
    feed(control, canary_error=0.01)
    clock.now += PLAN.interval_s
    before = control.documents()
    with write_locked(tmp_path / "s.db"), pytest.raises(StateStoreError):
        control.tick()  # would advance to 50%
    assert control.documents() == before
    assert control.tick() and control.snapshot()["patchtst"]["split"] == {"v1": 0.5, "v2": 0.5}
    assert [e["detail"]["split"] for e in control.store.events("patchtst")] == [
        {"v1": 0.9, "v2": 0.1}, {"v1": 0.5, "v2": 0.5}]



def test_a_replaced_control_plane_can_no_longer_change_traffic(tmp_path: Path):
    clock = Clock()

    def plane() -> TrafficController:
        store = StateStore(f"sqlite:///{tmp_path / 's.db'}")
        store.claim()
        return TrafficController(store, DECLARED, clock)

    old = plane()
    old.start_rollout("patchtst", PLAN)
    new = plane()
    before = old.snapshot()
    with pytest.raises(StateStoreSuperseded):
        old.set_traffic("patchtst", TrafficChange(shadow={"v2": 0.5}))
    feed(old, canary_error=0.01)
    clock.now += PLAN.interval_s
    with pytest.raises(StateStoreSuperseded):
        old.tick()  # it would advance the step
    assert old.snapshot() == before
    assert plane().snapshot() == new.snapshot() == before

def test_labels_the_store_failed_to_keep_teach_a_rollout_once(tmp_path: Path):
    clock = Clock()
    url = f"sqlite:///{tmp_path / 's.db'}?timeout=0.05"
    control = TrafficController(StateStore(url), DECLARED, clock)
    trust = TrustBook(TrustSpec(), {"patchtst-v1": 1.0, "patchtst-v2": 1.0, "lstm-v1": 1.0})
    ledger = Ledger(StateStore(url), trust, LedgerSpec(), clock, observer=control)
    control.start_rollout("patchtst", PLAN)
    ledger.record([(f"r{i}", clock.now, {"patchtst-v2": 0.0}) for i in range(30)])
    labels = [(f"r{i}", 0.1) for i in range(30)]
    with write_locked(tmp_path / "s.db"), pytest.raises(StateStoreError):
        ledger.feedback(labels)
    assert control.rollouts["patchtst"].canary_window.labels == 0
    assert ledger.feedback(labels).applied == 30
    assert control.rollouts["patchtst"].canary_window.labels == 30



def test_shares_published_as_gauges_fall_to_zero_when_a_version_is_left_out(tmp_path: Path):
    control = controller(tmp_path / "s.db", Clock())
    published = {"split": set(), "shadow": set()}
    control.set_traffic("patchtst", TrafficChange(split={"v1": 0.9, "v2": 0.1}, shadow={"v2": 0.2}))
    assert shares_to_publish(control.snapshot(), "shadow", published["shadow"]) == {("patchtst", "v2"): 0.2}
    shares_to_publish(control.snapshot(), "split", published["split"])
    control.set_traffic("patchtst", TrafficChange(split={"v2": 1.0}, shadow={}))
    assert shares_to_publish(control.snapshot(), "split", published["split"]) == {
        ("patchtst", "v1"): 0.0, ("patchtst", "v2"): 1.0, ("lstm", "v1"): 1.0}
    assert shares_to_publish(control.snapshot(), "shadow", published["shadow"]) == {("patchtst", "v2"): 0.0}

def test_version_window_and_call_stats():
    window = VersionWindow()
    assert window.p99_s is None and window.mse is None and window.error_rate is None
    stats = CallStats()
    stats.add("a-v1", 99, False, 0.001)
    stats.add("a-v1", 1, True, 0.3)
    drained = stats.drain()
    assert stats.drain() == {}
    window.add_calls(**drained["a-v1"])
    assert window.error_rate == 0.01 and 0.001 <= window.p99_s < 0.0012
    window.add_calls(0, 0, [0] * latency_bucket(0.3) + [5] + [0] * (len(window.latency) - latency_bucket(0.3) - 1))
    assert window.p99_s >= 0.3
    rollout = Rollout(member="m", stable="v1", plan=PLAN, started_at=1.0)
    assert Rollout.from_state(rollout.state()) == rollout


def test_plan_validation():
    with pytest.raises(ValueError, match="increasing"):
        RolloutPlan(canary="v2", steps=[50, 25, 100])
    with pytest.raises(ValueError, match="last step must be 100"):
        RolloutPlan(canary="v2", steps=[5, 50])
    with pytest.raises(ValidationError, match="last step must be 100"):  # a plain error here was a 500
        RolloutPlan(canary="v2", steps=[])
    with pytest.raises(ValueError, match="one below 100 first"):  # its MSE gate would wait for ever
        RolloutPlan(canary="v2", steps=[100])
    for limit in (0.0002, 20.0):  # beyond the histogram's buckets the p99 reads 0.5 ms or infinity
        with pytest.raises(ValidationError, match="max_p99_latency_s"):
            RolloutPlan(canary="v2", max_p99_latency_s=limit)
    assert RolloutPlan(canary="v2", max_p99_latency_s=15.0).max_p99_latency_s == 15.0


def test_admin_token_and_authorisation(tmp_path: Path):
    assert admin_token({}) is None
    secret = tmp_path / "token"
    secret.write_text("s3cret\n")
    assert admin_token({"ENSEMBLE_ADMIN_TOKEN_FILE": str(secret)}) == "s3cret"
    assert admin_token({"ENSEMBLE_ADMIN_TOKEN": "abc", "ENSEMBLE_ADMIN_TOKEN_FILE": str(secret)}) == "abc"
    assert authorise("Bearer abc", None)[0] == 403
    assert authorise(None, "abc")[0] == 401
    assert authorise("Bearer abd", "abc")[0] == 401
    assert authorise("Basic abc", "abc")[0] == 401
    assert authorise("Bearer abc", "abc") is None
