"""Persistent state behind one small interface: an embedded SQLite file by default.

Through SQLAlchemy, so a PostgreSQL URL replaces the file on a cluster. Holds what must
survive a restart: the prediction log (for late labels), applied feedback, the learned trust
state, settings such as traffic splits and rollouts, and the rollout history.
"""
from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import orjson
from sqlalchemy import (
    JSON,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    true,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

metadata = MetaData()
IN_CHUNK = 500  # request ids per `IN (...)` query: SQLite's bound parameters are limited
OWNER_DOCUMENT = "owner"  # the generation of the control plane that last claimed the store

predictions = Table(
    "predictions",
    metadata,
    Column("request_id", String(256), primary_key=True),
    Column("created_at", Float, nullable=False, index=True),
    Column("members", JSON, nullable=False),  # deployment name -> prediction
)
labels = Table(
    "labels",
    metadata,
    Column("request_id", String(256), primary_key=True),
    Column("actual", Float, nullable=False),
    Column("received_at", Float, nullable=False),
    Column("status", String(16), nullable=False),  # applied | pending | unknown
)
documents = Table(  # small JSON documents: trust state, splits, rollouts
    "documents",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("value", JSON, nullable=False),
    Column("updated_at", Float, nullable=False),
)
events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("kind", String(64), nullable=False),
    Column("subject", String(128), nullable=False),
    Column("detail", JSON, nullable=False),
)
# Added after the tables' first release. Pruning finds labels by age, and the unknown ones by
# status and age; a member's report reads its own newest events.
ADDED_INDEXES = (Index("labels_received_at", labels.c.received_at),
                 Index("labels_status_received_at", labels.c.status, labels.c.received_at),
                 Index("events_by_subject", events.c.subject, events.c.id))


def _sqlite_pragmas(dbapi_connection: Any, _: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL: readers never block the writer; FULL: a committed transaction survives power loss.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()


def _chunks(ids: list[str]) -> Iterator[list[str]]:
    """`ids` in slices of IN_CHUNK, each for one `IN (...)` query."""
    for start in range(0, len(ids), IN_CHUNK):
        yield ids[start : start + IN_CHUNK]


def _json_dumps(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY).decode()


class StateStoreError(RuntimeError):
    """The store failed for a while (locked, unreachable, full): what the call wrote is rolled
    back, so the caller may send it again. Errors that sending again would repeat (a constraint,
    a malformed value) stay SQLAlchemy's."""


class StateStoreSuperseded(StateStoreError):
    """A newer control plane claimed the store (Serve starts a replacement while the old replica
    still drains): this one's documents are stale, and it may no longer write them. Sent again,
    a change reaches the newer one."""


P = ParamSpec("P")
R = TypeVar("R")


def _store_errors(method: Callable[P, R]) -> Callable[P, R]:
    """The database's passing failures, whatever the dialect, as a `StateStoreError`."""
    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except (OperationalError, PoolTimeoutError) as exc:
            cause = getattr(exc, "orig", None) or exc
            raise StateStoreError(f"the state store failed: {cause}") from exc
    return wrapper


class StateStore:
    def __init__(self, url: str) -> None:
        if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        # orjson for the JSON columns: the stdlib encoder was half of the control plane's time
        # logging predictions under load. Floats round-trip exactly either way.
        self.engine: Engine = create_engine(url, json_serializer=_json_dumps, json_deserializer=orjson.loads)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        metadata.create_all(self.engine)
        for index in ADDED_INDEXES:  # create_all leaves the tables of an older store as they were
            index.create(self.engine, checkfirst=True)
        self._generation: int | None = None  # claimed by a control plane; others never check

    # -- prediction log ---------------------------------------------------------------
    @_store_errors
    def log_predictions(self, rows: Sequence[tuple[str, float, dict[str, float]]]) -> int:
        """Store `rows`; how many of their request ids the log did not hold before."""
        if not rows:
            return 0
        # A repeated request_id replaces the older prediction, in this batch or before it: the
        # latest answer is what a label refers to. One made later than the one it replaces is a
        # new answer, whose label is still to come: the label of the old one is forgotten (a
        # router sending the same prediction again leaves it).
        latest = {rid: (created, members) for rid, created, members in rows}
        with self.engine.begin() as conn:
            logged = {rid: created for chunk in _chunks(list(latest)) for rid, created in conn.execute(
                select(predictions.c.request_id, predictions.c.created_at).where(predictions.c.request_id.in_(chunk)))}
            for chunk in _chunks(list(logged)):
                conn.execute(delete(predictions).where(predictions.c.request_id.in_(chunk)))
            for chunk in _chunks([rid for rid, created in logged.items() if latest[rid][0] > created]):
                conn.execute(delete(labels).where(labels.c.request_id.in_(chunk), labels.c.status != "pending"))
            conn.execute(insert(predictions),
                         [{"request_id": rid, "created_at": t, "members": m} for rid, (t, m) in latest.items()])
        return len(latest) - len(logged)

    @_store_errors
    def logged_predictions(self, request_ids: Iterable[str], since: float) -> dict[str, tuple[float, dict[str, float]]]:
        """When and what each member version predicted, for those of `request_ids` logged at `since` or later."""
        ids = list(request_ids)
        found: dict[str, tuple[float, dict[str, float]]] = {}
        if not ids:
            return found
        with self.engine.connect() as conn:
            for chunk in _chunks(ids):
                query = select(predictions.c.request_id, predictions.c.created_at, predictions.c.members).where(
                    predictions.c.request_id.in_(chunk), predictions.c.created_at >= since)
                found.update((rid, (created, members)) for rid, created, members in conn.execute(query))
        return found

    @_store_errors
    def count_predictions(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(predictions)).scalar_one()

    @_store_errors
    def recent_predictions(self, since: float, limit: int) -> list[tuple[str, float, dict[str, float]]]:
        query = (
            select(predictions.c.request_id, predictions.c.created_at, predictions.c.members)
            .where(predictions.c.created_at >= since)
            .order_by(predictions.c.created_at.desc())
            .limit(limit)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [(r.request_id, r.created_at, r.members) for r in reversed(rows)]

    @_store_errors
    def prune(self, predictions_before: float, label_margin_s: float, keep: int | None) -> int:
        """Drop predictions created before `predictions_before`, then, unless `keep` is None, all
        but the newest `keep`; then the labels received `label_margin_s` before the oldest
        prediction left could have been made (none of them could still join one), and all but
        `keep` unknown labels (those joined nothing, so none is learned twice). The totals keep
        what was counted. The ages use their indexes; the counts cost a scan of each table.
        Returns how many predictions went."""
        unknown = labels.c.status == "unknown"
        with self.engine.begin() as conn:
            dropped = conn.execute(delete(predictions).where(predictions.c.created_at < predictions_before)).rowcount
            cutoff = None if keep is None else self._newest_beyond(conn, predictions.c.created_at, true(), keep)
            if cutoff is not None:
                dropped += conn.execute(delete(predictions).where(predictions.c.created_at <= cutoff)).rowcount
                predictions_before = max(predictions_before, cutoff)
            conn.execute(delete(labels).where(labels.c.received_at < predictions_before - label_margin_s))
            cutoff = None if keep is None else self._newest_beyond(conn, labels.c.received_at, unknown, keep)
            if cutoff is not None:
                conn.execute(delete(labels).where(unknown, labels.c.received_at <= cutoff))
        return dropped

    @staticmethod
    def _newest_beyond(conn: Any, at: Any, which: Any, keep: int) -> float | None:
        """The time `at` of the newest row of `which` beyond the newest `keep`; None if there are
        no more than `keep`."""
        table = at.table
        if conn.execute(select(func.count()).select_from(table).where(which)).scalar_one() <= keep:
            return None
        return conn.execute(select(at).where(which).order_by(at.desc()).offset(keep).limit(1)).scalar_one()

    # -- labels and learned state -------------------------------------------------------
    @_store_errors
    def known_labels(self, request_ids: Iterable[str]) -> set[str]:
        ids = list(request_ids)
        known: set[str] = set()
        with self.engine.connect() as conn:
            for chunk in _chunks(ids):
                known.update(conn.execute(select(labels.c.request_id).where(labels.c.request_id.in_(chunk))).scalars())
        return known

    @_store_errors
    def save_labels(
        self,
        new: Sequence[tuple[str, float, float, str]],
        status_changes: dict[str, str],
        documents_to_save: dict[str, Any],
    ) -> None:
        """New labels, status changes of earlier ones and the state they produced: one transaction."""
        now = time.time()
        with self.engine.begin() as conn:
            self._check_owner(conn)
            if new:
                conn.execute(
                    insert(labels),
                    [{"request_id": i, "actual": a, "received_at": t, "status": s} for i, a, t, s in new],
                )
            for status in set(status_changes.values()):
                for chunk in _chunks([i for i, s in status_changes.items() if s == status]):
                    conn.execute(labels.update().where(labels.c.request_id.in_(chunk)).values(status=status))
            self._put_documents(conn, documents_to_save, now)

    @_store_errors
    def pending_labels(self) -> list[tuple[str, float, float]]:
        query = select(labels.c.request_id, labels.c.actual, labels.c.received_at).where(labels.c.status == "pending")
        with self.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(query).all()]

    @_store_errors
    def label_counts(self) -> dict[str, int]:
        query = select(labels.c.status, func.count()).group_by(labels.c.status)
        with self.engine.connect() as conn:
            return {status: count for status, count in conn.execute(query).all()}

    # -- documents and events ---------------------------------------------------------------
    def _put_documents(self, conn: Any, values: dict[str, Any], now: float) -> None:
        if values:
            conn.execute(delete(documents).where(documents.c.name.in_(list(values))))
            conn.execute(insert(documents), [{"name": n, "value": v, "updated_at": now} for n, v in values.items()])

    @_store_errors
    def claim(self) -> int:
        """Make this store's writer the store's only one, before reading what it will write:
        a writer that claimed it before gets `StateStoreSuperseded` for its later documents
        and labels (its in-memory state would overwrite what this one learns). The generation."""
        with self.engine.begin() as conn:
            self._generation = self._owner(conn) + 1
            # An object: SQLite's JSON column would turn a bare number's text into an integer.
            self._put_documents(conn, {OWNER_DOCUMENT: {"generation": self._generation}}, time.time())
        return self._generation

    @staticmethod
    def _owner(conn: Any) -> int:
        """The generation that last claimed the store (0: none), locked until the transaction ends."""
        owner = conn.execute(select(documents.c.value).where(documents.c.name == OWNER_DOCUMENT)
                             .with_for_update()).scalar()
        return int(owner["generation"]) if owner else 0

    def _check_owner(self, conn: Any) -> None:
        if self._generation is None:
            return
        current = self._owner(conn)
        if current != self._generation:
            raise StateStoreSuperseded(f"another control plane (generation {current}) took over the state store "
                                       f"from this one (generation {self._generation})")

    @_store_errors
    def put_documents(self, values: dict[str, Any], new_events: Sequence[tuple[str, str, dict]] = ()) -> None:
        """Save documents and append events (kind, subject, detail) in one transaction."""
        now = time.time()
        with self.engine.begin() as conn:
            self._check_owner(conn)
            self._put_documents(conn, values, now)
            if new_events:
                conn.execute(insert(events), [{"at": now, "kind": k, "subject": s, "detail": d} for k, s, d in new_events])

    @_store_errors
    def get_documents(self) -> dict[str, Any]:
        with self.engine.connect() as conn:
            return {r.name: r.value for r in conn.execute(select(documents.c.name, documents.c.value)).all()}

    @_store_errors
    def events(self, subject: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
        query = select(events).order_by(events.c.id.desc()).limit(limit)
        if subject is not None:
            query = query.where(events.c.subject == subject)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [{"at": r.at, "kind": r.kind, "subject": r.subject, "detail": r.detail} for r in reversed(rows)]
