"""Prediction log, feedback join and persistence, on a real SQLite file (no Ray)."""
from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import event as sqlalchemy_event

from ensemble.ledger import CACHED_PREDICTIONS, CLOCK_SKEW_S, COUNT_CAP_EVERY_S, Ledger, LedgerSpec
from ensemble.store import StateStore, StateStoreError, StateStoreSuperseded
from ensemble.trust import ROBUST_FROM, TrustBook, TrustSpec
from tests.store_lock import write_locked

PRIORS = {"a-v1": 1.0, "b-v1": 1.0}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def warmed_trust() -> TrustBook:
    """Trust past the first labels, which it learns from only together (ensemble/trust.py): these
    tests count what each label teaches. Labels that no member predicted set only the scale."""
    trust = TrustBook(TrustSpec(), dict(PRIORS))
    trust.update([({}, float(y)) for y in range(ROBUST_FROM)])
    return trust


def ledger(path: Path, clock: Clock, **spec) -> Ledger:
    return Ledger(StateStore(f"sqlite:///{path}"), warmed_trust(), LedgerSpec(**spec), clock)


def test_join_dedupe_unknown_and_restart(tmp_path: Path):
    clock = Clock()
    first = ledger(tmp_path / "s.db", clock, join_grace_s=0)
    first.record([(f"r{i}", clock.now, {"a-v1": 0.0, "b-v1": 1.0}) for i in range(50)])
    report = first.feedback([(f"r{i}", 1.0) for i in range(50)] + [("r0", 1.0), ("ghost", 2.0)])
    assert (report.received, report.applied, report.duplicate, report.unknown) == (52, 50, 1, 1)
    assert first.feedback([("r1", 1.0)]).duplicate == 1  # a later resend too
    weights = first.trust.weights()
    assert weights["b-v1"] > weights["a-v1"]
    again = ledger(tmp_path / "s.db", clock, join_grace_s=0)
    assert again.trust.weights() == weights  # exactly, not approximately
    assert vars(again.totals) == vars(first.totals)
    assert len(again) == 50


def test_label_before_its_prediction_waits_then_joins(tmp_path: Path):
    clock = Clock()
    book = ledger(tmp_path / "s.db", clock, join_grace_s=5)
    assert book.feedback([("late", 1.0)]).pending == 1
    assert book.record([("late", clock.now, {"a-v1": 1.0})]).applied == 1
    assert book.trust.stats["a-v1"].labels == 1
    book.feedback([("never", 1.0)])
    clock.now += 6
    book.expire()
    assert book.totals.unknown == 1 and book.totals.pending == 0


def test_a_report_counts_only_the_callers_labels(tmp_path: Path):
    clock = Clock()
    book = ledger(tmp_path / "s.db", clock, join_grace_s=5)
    book.feedback([(f"early{i}", 1.0) for i in range(3)])  # one caller's labels, never predicted
    book.record([("r", clock.now, {"a-v1": 0.0})])
    clock.now += 6
    assert vars(book.feedback([("r", 1.0)])) == {"received": 1, "applied": 1, "duplicate": 0, "pending": 0, "unknown": 0}
    assert (book.totals.pending, book.totals.unknown, book.totals.applied) == (0, 3, 1)
    assert vars(ledger(tmp_path / "s.db", clock, join_grace_s=5).totals) == vars(book.totals)


def test_a_waiting_label_joins_though_its_prediction_is_evicted_at_once(tmp_path: Path):
    clock = Clock()
    book = ledger(tmp_path / "s.db", clock, max_predictions=100, join_grace_s=5)
    book.feedback([("r0", 1.0)])
    assert book.record([(f"r{i}", clock.now, {"a-v1": 0.0}) for i in range(150)]).applied == 1
    assert book.trust.stats["a-v1"].labels == 1


def test_a_prediction_past_its_age_is_not_joined(tmp_path: Path):
    clock = Clock()
    book = ledger(tmp_path / "s.db", clock, max_age_s=60, join_grace_s=0)
    book.record([("old", clock.now, {"a-v1": 0.0})])
    clock.now += 61
    assert book.feedback([("old", 1.0)]).unknown == 1  # no prediction logged since: unknown all the same


def test_labels_are_bounded_by_age_and_the_unknown_ones_by_count(tmp_path: Path):
    clock = Clock()
    book = ledger(tmp_path / "s.db", clock, max_predictions=100, max_age_s=60, join_grace_s=0)
    book.record([("r", clock.now, {"a-v1": 0.0})])
    book.feedback([("r", 1.0)])
    for i in range(150):
        clock.now += 0.1
        book.feedback([(f"ghost{i}", 1.0)])
    book.expire()
    assert book.store.label_counts() == {"applied": 1, "unknown": 100}
    assert book.feedback([("r", 1.0)]).duplicate == 1  # an applied label is kept while it could join
    clock.now += 61 + CLOCK_SKEW_S  # past any prediction it could join, however early it came
    book.expire()
    assert book.store.label_counts() == {} and book.totals.unknown == 150


def test_labels_go_with_the_predictions_the_count_cap_dropped(tmp_path: Path):
    """Under the count cap, and not only after max_age_s (a week by default): at a steady label
    rate the labels table would otherwise hold a week of them, whatever max_predictions says."""
    clock = Clock()
    book = ledger(tmp_path / "s.db", clock, max_predictions=100, join_grace_s=5)
    book.record([(f"old{i}", clock.now, {"a-v1": 0.0}) for i in range(100)])
    book.feedback([(f"old{i}", 1.0) for i in range(100)])
    clock.now += CLOCK_SKEW_S + 10
    book.record([(f"mid{i}", clock.now, {"a-v1": 0.0}) for i in range(100)])
    book.record([(f"new{i}", clock.now + 1, {"a-v1": 0.0}) for i in range(100)])
    book.feedback([("mid0", 1.0), ("new0", 1.0)])
    book.expire()  # the cap keeps the newest 100 predictions
    # The old labels are older than any kept prediction could have been made, however early a
    # label comes or fast a router's clock runs; mid0's label stays within that margin.
    assert book.store.label_counts() == {"applied": 2}
    assert book.feedback([("new0", 1.0)]).duplicate == 1
    # Its prediction went: it waits its grace for one, then counts as unknown. Nothing is learned twice.
    assert book.feedback([("old0", 1.0)]).pending == 1


def test_the_count_caps_are_applied_at_once_then_once_a_minute(tmp_path: Path):
    """Counting scans both tables, so the caps wait a minute between runs; the ages do not."""
    clock = Clock()
    book = ledger(tmp_path / "s.db", clock, max_predictions=100, max_age_s=600, join_grace_s=0)

    def stored() -> int:
        return len(book.store.recent_predictions(0.0, 10**6))

    book.record([(f"a{i}", clock.now + i / 1000, {"a-v1": 0.0}) for i in range(150)])
    book.expire()
    assert stored() == 100
    book.record([(f"b{i}", clock.now + 1 + i / 1000, {"a-v1": 0.0}) for i in range(50)])
    clock.now += COUNT_CAP_EVERY_S / 2
    book.expire()
    assert stored() == 150
    clock.now += COUNT_CAP_EVERY_S / 2
    book.expire()
    assert stored() == 100
    clock.now += 601  # past max_age_s: gone at the next tick, whatever the count
    book.expire()
    assert stored() == 0


def test_a_label_that_came_before_its_prediction_is_kept_while_that_can_join(tmp_path: Path):
    clock = Clock()
    book = ledger(tmp_path / "s.db", clock, max_age_s=60, join_grace_s=5)
    book.feedback([("r", 1.0)])
    clock.now += 4
    assert book.record([("r", clock.now, {"a-v1": 0.0})]).applied == 1
    clock.now += 58  # the label is 62 s old, its prediction 58 s: still joinable
    book.expire()
    assert book.feedback([("r", 1.0)]).duplicate == 1


def test_pending_labels_survive_a_restart(tmp_path: Path):
    clock = Clock()
    ledger(tmp_path / "s.db", clock, join_grace_s=60).feedback([("early", 2.0)])
    again = ledger(tmp_path / "s.db", clock, join_grace_s=60)
    assert again.record([("early", clock.now, {"b-v1": 2.0})]).applied == 1


def test_log_is_bounded_by_size_and_age(tmp_path: Path):
    clock = Clock()
    book = ledger(tmp_path / "s.db", clock, max_predictions=100, max_age_s=60, join_grace_s=0)
    book.record([(f"r{i}", clock.now + i / 1000, {"a-v1": 0.0}) for i in range(150)])
    assert len(book) == 150  # until the housekeeping tick applies the count cap
    book.expire()
    assert len(book) == 100
    assert book.feedback([("r0", 1.0)]).unknown == 1  # pruned: counted, not an error
    clock.now += 61
    book.record([("fresh", clock.now, {"a-v1": 0.0})])
    assert book.feedback([("r60", 1.0)]).unknown == 1  # past its age, though not pruned yet
    book.expire()
    assert len(book) == 1
    assert len(ledger(tmp_path / "s.db", clock, max_predictions=100, max_age_s=60)) == 1


def test_labels_join_predictions_no_longer_in_memory_also_after_a_restart(tmp_path: Path):
    """Memory keeps the newest predictions; older ones are read from the store when their labels come."""
    clock = Clock()
    path = tmp_path / "s.db"

    def book() -> Ledger:
        return Ledger(StateStore(f"sqlite:///{path}"), TrustBook(TrustSpec(), dict(PRIORS)),
                      LedgerSpec(join_grace_s=0), clock, cached=10)

    first = book()
    first.record([(f"r{i}", clock.now, {"a-v1": 0.0, "b-v1": float(i)}) for i in range(50)])
    first.record([], [("r0", clock.now, {"b-v2": 0.5})])  # a shadow output for one no longer in memory
    assert vars(first.feedback([(f"r{i}", 0.0) for i in range(20)])) == {
        "received": 20, "applied": 20, "duplicate": 0, "pending": 0, "unknown": 0}
    again = book()
    assert len(again) == 50
    assert again.feedback([(f"r{i}", 0.0) for i in range(20, 50)]).applied == 30
    assert again.trust.stats["b-v1"].labels == 50 and again.trust.weights()["a-v1"] > again.trust.weights()["b-v1"]
    assert again.trust.stats["b-v2"].labels == 1


@pytest.mark.parametrize("policy", ["hedge", "inverse_error", "static"])
def test_every_policy_restores_exactly(tmp_path: Path, policy: str):
    clock = Clock()
    store = StateStore(f"sqlite:///{tmp_path / 's.db'}")
    book = Ledger(store, TrustBook(TrustSpec(policy=policy), dict(PRIORS)), LedgerSpec(), clock)
    book.record([(f"r{i}", clock.now, {"a-v1": i * 0.1, "b-v1": 0.3}) for i in range(20)])
    book.feedback([(f"r{i}", 0.5) for i in range(20)])
    restored = Ledger(StateStore(f"sqlite:///{tmp_path / 's.db'}"), TrustBook(TrustSpec(policy=policy), dict(PRIORS)),
                      LedgerSpec(), clock)
    assert restored.trust.weights() == book.trust.weights()


def test_a_request_id_repeated_within_one_batch_keeps_the_latest(tmp_path: Path):
    """Clients reuse request ids; one shipped batch holding the same id twice must still be logged."""
    clock = Clock()
    book = ledger(tmp_path / "s.db", clock, join_grace_s=0)
    book.record([("dup", clock.now, {"a-v1": 5.0}), ("other", clock.now, {"a-v1": 0.0}),
                 ("dup", clock.now + 1, {"a-v1": 1.0})],
                shadow_rows=[("dup", clock.now + 1, {"b-v1": 1.0})])
    again = ledger(tmp_path / "s.db", clock, join_grace_s=0)
    assert len(again) == 2
    assert again.feedback([("dup", 1.0)]).applied == 1
    assert again.trust.stats["a-v1"].labels == 1 and again.trust.stats["b-v1"].labels == 1
    assert again.trust.stats["a-v1"].recent() == 0.0  # the latest prediction (1.0) was joined, not 5.0



def test_many_waiting_labels_and_repeated_ids_fit_the_databases_query_limits(tmp_path: Path):
    """SQLite bounds the parameters of one query (32,766 by default, 999 here): labels settling
    together and a batch of predictions replacing logged ones go in several queries."""
    clock = Clock()
    book = ledger(tmp_path / "s.db", clock, join_grace_s=5)
    sqlalchemy_event.listen(book.store.engine, "connect",
                            lambda conn, _: conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999))
    book.store.engine.dispose()
    ids = [f"r{i}" for i in range(2500)]
    assert book.feedback([(rid, 0.001) for rid in ids]).pending == len(ids)  # none logged yet
    clock.now += 6
    book.expire()  # their wait ends together: one status change for all of them
    assert book.store.label_counts().get("pending", 0) == 0
    rows = [(rid, clock.now, {"a-v1": 0.0}) for rid in ids]
    book.record(rows)
    book.record(rows)  # the same ids again: each replaces its logged prediction
    assert book.store.count_predictions() == len(ids)


def test_a_shadow_output_shipped_before_its_requests_prediction_is_scored(tmp_path: Path):
    """A shadow is mirrored before the fan-out and may answer first, in an earlier shipment."""
    clock = Clock()
    book = ledger(tmp_path / "s.db", clock, join_grace_s=0)
    book.record([], shadow_rows=[("r1", clock.now, {"b-v1": 1.0})])
    book.record([("r1", clock.now, {"a-v1": 0.5})])
    assert book.feedback([("r1", 1.0)]).applied == 1
    assert book.trust.stats["a-v1"].labels == 1 and book.trust.stats["b-v1"].labels == 1
    assert ledger(tmp_path / "s.db", clock).store.logged_predictions(["r1"], 0.0)["r1"][1] == {"a-v1": 0.5, "b-v1": 1.0}


@pytest.mark.parametrize("failing", ["log_predictions", "save_labels"])
def test_an_early_shadow_output_outlasts_a_store_that_fails_to_log_its_request(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str):
    """The router sends its rows again, without the shadow outputs it shipped before."""
    clock = Clock()
    book = ledger(tmp_path / "s.db", clock, join_grace_s=60)
    book.feedback([("r1", 1.0)])  # waiting: its join is saved after the row is logged
    book.record([], shadow_rows=[("r1", clock.now, {"b-v1": 1.0})])
    row = ("r1", clock.now, {"a-v1": 0.5})

    def fails(*_: object) -> None:
        raise StateStoreError("the state store failed: database is locked")

    with monkeypatch.context() as patch:
        patch.setattr(book.store, failing, fails)
        with pytest.raises(StateStoreError):
            book.record([row])
    assert book.record([row]).applied == 1
    assert book.trust.stats["a-v1"].labels == 1 and book.trust.stats["b-v1"].labels == 1
    assert book.store.logged_predictions(["r1"], 0.0)["r1"][1] == {"a-v1": 0.5, "b-v1": 1.0}


def test_a_control_plane_replaced_while_it_drains_writes_nothing_over_its_successor(tmp_path: Path):
    """Serve starts the new control plane while the old one still drains: the old one's labels
    would be marked applied while its trust document, written last or overwritten, lost them."""
    clock = Clock()

    def plane() -> Ledger:
        store = StateStore(f"sqlite:///{tmp_path / 's.db'}")
        store.claim()
        return Ledger(store, warmed_trust(), LedgerSpec(join_grace_s=0), clock)

    old = plane()
    old.record([(f"r{i}", clock.now, {"a-v1": 0.0}) for i in range(60)])
    assert old.feedback([(f"r{i}", 0.1) for i in range(10)]).applied == 10
    new = plane()
    with pytest.raises(StateStoreSuperseded):
        old.feedback([(f"r{i}", 0.1) for i in range(10, 60)])
    assert old.trust.stats["a-v1"].labels == 10  # as saved: nothing it could not keep
    assert new.feedback([(f"r{i}", 0.1) for i in range(10, 60)]).applied == 50  # sent again, to the new one
    assert plane().trust.stats["a-v1"].labels == 60


def test_a_request_id_used_again_for_a_later_prediction_takes_a_new_label(tmp_path: Path):
    """The latest answer under an id is what a label refers to: one made after the first was
    labelled gets its own label; the same prediction sent again by its router does not."""
    clock = Clock()
    book = ledger(tmp_path / "s.db", clock, join_grace_s=0)
    book.record([("example-0", clock.now, {"a-v1": 0.0})])
    assert book.feedback([("example-0", 1.0)]).applied == 1
    book.record([("example-0", clock.now, {"a-v1": 0.0})])  # re-sent after a failed shipment
    assert book.feedback([("example-0", 1.0)]).duplicate == 1
    clock.now += 60
    book.record([("example-0", clock.now, {"a-v1": 0.5})])
    assert book.feedback([("example-0", 1.0)]).applied == 1
    assert book.feedback([("example-0", 1.0)]).duplicate == 1
    assert ledger(tmp_path / "s.db", clock).trust.stats["a-v1"].labels == 2

def test_labels_the_store_failed_to_keep_are_learned_once_when_sent_again(tmp_path: Path):
    """Memory never runs ahead of the store: a retried feedback counts once, in memory and on disk."""
    clock = Clock()
    # A short busy timeout: the write waits that long for the lock, then fails.
    book = Ledger(StateStore(f"sqlite:///{tmp_path / 's.db'}?timeout=0.05"), warmed_trust(), LedgerSpec(join_grace_s=5),
                  clock)
    rows = [(f"r{i}", clock.now, {"a-v1": 0.0, "b-v1": 1.0}) for i in range(20)]
    book.record(rows)
    labels = [(f"r{i}", 1.0) for i in range(20)] + [("early", 1.0)]
    learned, totals = book.trust.state(), vars(book.totals).copy()
    with write_locked(tmp_path / "s.db"), pytest.raises(StateStoreError, match="database is locked"):
        book.feedback(labels)
    assert book.trust.state() == learned and vars(book.totals) == totals
    assert vars(book.feedback(labels)) == {"received": 21, "applied": 20, "duplicate": 0, "pending": 1, "unknown": 0}
    clean = ledger(tmp_path / "clean.db", clock, join_grace_s=5)
    clean.record(rows)
    clean.feedback(labels)
    assert book.trust.state() == clean.trust.state()
    assert ledger(tmp_path / "s.db", clock).trust.state() == clean.trust.state()


def test_labels_whose_wait_ended_stay_pending_while_the_store_fails(tmp_path: Path):
    clock = Clock()
    book = Ledger(StateStore(f"sqlite:///{tmp_path / 's.db'}?timeout=0.05"), TrustBook(TrustSpec(), dict(PRIORS)),
                  LedgerSpec(join_grace_s=5), clock)
    book.feedback([("never", 1.0)])
    clock.now += 6
    with write_locked(tmp_path / "s.db"), pytest.raises(StateStoreError):
        book.expire()
    assert (book.totals.pending, book.totals.unknown) == (1, 0)
    book.expire()
    assert (book.totals.pending, book.totals.unknown) == (0, 1)
    assert book.store.label_counts() == {"unknown": 1}


@pytest.mark.parametrize("cached, restart", [(CACHED_PREDICTIONS, False), (1, False), (1, True)])
def test_a_waiting_label_the_store_failed_to_keep_joins_once_when_its_grace_ends(tmp_path: Path, cached: int,
                                                                                 restart: bool):
    """The prediction was stored, the label's join was not: when the label's grace ends it joins
    that prediction, in memory or (pushed out by newer ones, or after a restart) in the store,
    and the router's resend of the prediction does not teach it again."""
    clock = Clock()

    def book_at() -> Ledger:
        return Ledger(StateStore(f"sqlite:///{tmp_path / 's.db'}"), warmed_trust(), LedgerSpec(join_grace_s=5), clock,
                      cached=cached)

    book = book_at()
    book.feedback([("late", 1.0)])
    learned, keep = book.trust.state(), book.store.save_labels

    def fail(*_: object) -> None:
        raise StateStoreError("the state store failed: disk I/O error")

    book.store.save_labels = fail  # the predictions are stored, the join is not
    made = clock.now
    with pytest.raises(StateStoreError):
        book.record([("late", made, {"a-v1": 0.0}), ("newer", made, {"a-v1": 0.0})])
    assert book.trust.state() == learned and book.totals.pending == 1
    book.store.save_labels = keep
    if restart:
        book = book_at()
    clock.now += 6  # the label's grace ends before the router sends the rows again
    book.expire()
    assert book.trust.stats["a-v1"].labels == 1
    assert (book.totals.applied, book.totals.pending, book.totals.unknown) == (1, 0, 0)
    assert book.record([("late", made, {"a-v1": 0.0})]).applied == 0  # the router's resend: the same row
    assert book.trust.stats["a-v1"].labels == 1 and book.feedback([("late", 1.0)]).duplicate == 1
    assert book.store.label_counts() == {"applied": 1}