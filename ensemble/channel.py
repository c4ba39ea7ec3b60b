"""A direct channel to a member replica: framed float32 over one TCP connection, no HTTP.

Serve still places, scales, health-checks and restarts the replicas; only the bytes of a call
take a shorter road. Over HTTP through Serve's ingress a one-row call cost 0.55 CPU ms in the
router, 1.0 ms of Serve's request path in the replica beyond the model, and 0.25 ms in HAProxy
(bench/call_cost.py); here both ends parse an 8-byte header.

Frames: a call is `<call id u32><payload bytes u32>` then `ensemble.wire` windows; a reply is
`<call id u32><status u8><payload bytes u32>` then predictions (status 0) or a UTF-8 error
message. A caller on the replica's node first sends the path of its arena (`ensemble.arena`)
under call id ATTACH; once the replica has mapped it, a call whose id has the IN_ARENA bit
carries `<offset u32><bytes u32>` of its windows there instead of the windows. Calls on one
connection are answered in any order. The calls that arrive back to back
(those sent while the replica was busy) go to the handler together, and `merged_model_calls`
answers them with one model call: the member's batching, without the per-call queue, futures
and task of `serve.batch` (a fifth to a quarter of the replica's CPU per one-row call, about
half per 64-row call; BENCHMARKS.md).
"""
from __future__ import annotations

import asyncio
import logging
import random
import struct
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import NamedTuple

import numpy as np

from ensemble.arena import ARENA_BYTES, Arena, Slot, open_arena
from ensemble.batching import predict_blocks
from ensemble.load import InFlight
from ensemble.wire import decode_predictions, encode

logger = logging.getLogger(__name__)
CALL = struct.Struct("<II")
REPLY = struct.Struct("<IBI")
OK, FAILED = 0, 1
ATTACH = 0  # the call id of the frame that carries the path of the caller's arena
IN_ARENA = 1 << 31  # the call id bit of a call whose windows lie in the arena
ARENA_REF = struct.Struct("<II")  # where: offset, bytes
ATTACH_TIMEOUT_S = 1.0
MAX_FRAME_BYTES = 256 * 1024 * 1024
MAX_MERGED_CALLS = 64  # calls received back to back that are answered together at most
RETRY_AFTER_S = 1.0  # an endpoint that refused or dropped a connection is skipped this long
REFRESH_S = 0.1  # how often a caller asks Serve's request router for a replica
FORGET_AFTER = 30  # refreshes without Serve choosing a replica after which a caller forgets it


class Endpoint(NamedTuple):
    """A replica's channel; `same_node` when it runs on the caller's node (the arena is used)."""

    host: str
    port: int
    same_node: bool = False


# Payloads of the calls that arrived together -> each one's reply payload, or why it has none.
FramesHandler = Callable[[list[memoryview]], Awaitable[list[bytes | Exception]]]


class ChannelError(RuntimeError):
    """The member replica answered the call with an error (its message)."""


class ChannelLost(ConnectionError):
    """The connection closed or could not be opened: the call may be sent elsewhere."""


class _Frames:
    """Splits a byte stream into (header fields, payload) frames.

    A payload is a read-only view of the bytes as they arrived where its frame came in one
    read, and of one buffer the reads were appended to where it spanned several: a 64-row call
    (256 KiB, five reads) cost 117-157 µs to reassemble when every frame was sliced out of a
    buffer and copied to bytes, about a third of the trees' model call on it.
    """

    def __init__(self, header: struct.Struct) -> None:
        self._header = header
        self._buffer = bytearray()  # the start of a frame whose end has not arrived; never viewed

    def feed(self, data: bytes) -> list[tuple[tuple[int, ...], memoryview]]:
        if self._buffer:
            self._buffer += data
            if not self._complete(self._buffer):
                return []
            # Views of this buffer are handed out: later bytes go to a new one.
            stream, self._buffer = memoryview(self._buffer).toreadonly(), bytearray()
        else:
            stream = memoryview(data)
        frames, start, size = [], 0, self._header.size
        while len(stream) - start >= size:
            end = start + size + self._length(stream, start)
            if len(stream) < end:
                break
            frames.append((self._header.unpack_from(stream, start), stream[start + size:end]))
            start = end
        if start < len(stream):
            self._buffer = bytearray(stream[start:])
        return frames

    def _length(self, header: memoryview | bytearray, start: int = 0) -> int:
        length = self._header.unpack_from(header, start)[-1]
        if length > MAX_FRAME_BYTES:
            raise ValueError(f"frame of {length} bytes exceeds {MAX_FRAME_BYTES}")
        return length

    def _complete(self, buffer: bytearray) -> bool:
        """Whether `buffer` holds at least one whole frame."""
        size = self._header.size
        return len(buffer) >= size and len(buffer) >= size + self._length(buffer)

    @property
    def partial(self) -> bool:
        """Whether part of a frame is buffered: its sender is in the middle of sending it."""
        return bool(self._buffer)


def merged_model_calls(decode: Callable[[memoryview], np.ndarray], predict: Callable[[np.ndarray], np.ndarray],
                       max_rows: int) -> FramesHandler:
    """A `FramesHandler` that decodes each call's windows and answers the calls with as few
    `predict`s as `max_rows` allows (a call larger than that alone). A call that does not decode,
    or a model call that fails, fails only the calls it carries."""

    async def answer(payloads: list[memoryview]) -> list[bytes | Exception]:
        replies: list[bytes | Exception] = [b""] * len(payloads)
        groups: list[list[tuple[int, np.ndarray]]] = []
        rows = 0
        for i, payload in enumerate(payloads):
            try:
                block = decode(payload)
            except Exception as exc:  # noqa: BLE001 - this call alone is malformed
                replies[i] = exc
                continue
            if not groups or rows + len(block) > max_rows:
                groups.append([])
                rows = 0
            groups[-1].append((i, block))
            rows += len(block)
        for group in groups:
            try:
                outputs: list[np.ndarray | Exception] = predict_blocks(predict, [block for _, block in group])
            except Exception as exc:  # noqa: BLE001 - the calls of this model call get the error
                outputs = [exc] * len(group)
            for (i, _), output in zip(group, outputs):
                replies[i] = output if isinstance(output, Exception) else encode(output)
        return replies

    return answer


def _error_message(exc: BaseException) -> bytes:
    return f"{type(exc).__name__}: {exc}".encode()


class _ServerProtocol(asyncio.Protocol):
    def __init__(self, handler: FramesHandler, server: ChannelServer) -> None:
        self._handler = handler
        self._server = server
        self._frames = _Frames(CALL)
        self._received: list[tuple[int, memoryview]] = []  # (call id, windows) not yet answered
        self._arena: memoryview | None = None  # the caller's, once it sent one
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            for (call_id, _), payload in self._frames.feed(data):
                if call_id == ATTACH:
                    self._attach(payload)
                else:
                    self._received.append((call_id, self._in_arena(payload) if call_id & IN_ARENA else payload))
        except ValueError:  # a frame too large or an arena reference out of bounds: not a caller of ours
            self._transport.close()
            return
        # Calls sent back to back (those queued while the model ran) arrive over several reads:
        # they are answered together once a read ends between frames. A lone call waits for nothing.
        if self._received and (not self._frames.partial or len(self._received) >= MAX_MERGED_CALLS):
            calls, self._received = self._received, []
            asyncio.get_running_loop().create_task(self._answer([call_id for call_id, _ in calls],
                                                                [windows for _, windows in calls]))

    def _attach(self, payload: memoryview) -> None:
        try:
            self._arena = open_arena(bytes(payload).decode())
            reply: bytes | Exception = b""
        except (OSError, UnicodeDecodeError) as exc:  # the caller sends its windows in the frames
            reply = exc
        self._write([ATTACH], [reply])

    def _in_arena(self, payload: memoryview) -> memoryview:
        if self._arena is None or len(payload) != ARENA_REF.size:
            raise ValueError("a call in an arena that was not attached")
        offset, nbytes = ARENA_REF.unpack(payload)
        if offset + nbytes > len(self._arena):
            raise ValueError("a call beyond its arena")
        return self._arena[offset:offset + nbytes]

    async def _answer(self, call_ids: list[int], payloads: list[memoryview]) -> None:
        self._server.load.count(len(call_ids))
        try:
            replies = await self._handler(payloads)
        except Exception as exc:  # noqa: BLE001 - the callers get the message, the replica keeps serving
            replies = [exc] * len(call_ids)
        finally:
            self._server.load.count(-len(call_ids))
            self._server.answered += len(call_ids)
            self._server.answered_in_arena += sum(1 for call_id in call_ids if call_id & IN_ARENA)
        self._write(call_ids, replies)

    def _write(self, call_ids: list[int], replies: list[bytes | Exception]) -> None:
        if self._transport.is_closing():
            return
        out = bytearray()
        for call_id, reply in zip(call_ids, replies):
            status, body = (FAILED, _error_message(reply)) if isinstance(reply, Exception) else (OK, reply)
            out += REPLY.pack(call_id, status, len(body))
            out += body
        self._transport.write(out)


class ChannelServer:
    """Serves `handler` (the payloads of calls that arrived together -> their replies) on a TCP
    port of `host`."""

    def __init__(self, handler: FramesHandler) -> None:
        self._handler = handler
        self._server: asyncio.Server | None = None
        self.load = InFlight()  # calls being answered; Serve's autoscaler does not see them, so the replica reports them
        self.answered = 0  # calls answered since the start
        self.answered_in_arena = 0  # of which the windows lay in their caller's arena

    async def start(self, host: str, port: int = 0) -> Endpoint:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _ServerProtocol(self._handler, self), host, port)
        return Endpoint(host, self._server.sockets[0].getsockname()[1])

    def close(self) -> None:
        if self._server is not None:
            self._server.close()


class ChannelConnection(asyncio.Protocol):
    """The caller's end: many calls in flight, each matched to its reply by id."""

    def __init__(self) -> None:
        self._frames = _Frames(REPLY)
        self._pending: dict[int, asyncio.Future[memoryview]] = {}
        self._next_id = 0
        self._transport: asyncio.Transport | None = None
        self._arena: Arena | None = None
        self._slots: dict[int, Slot] = {}  # call id -> its windows in the arena, until its reply is in
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            frames = self._frames.feed(data)
        except ValueError as exc:
            self._transport.close()
            self._fail_all(ChannelLost(str(exc)))
            return
        for (call_id, status, _), payload in frames:
            slot = self._slots.pop(call_id, None)
            if slot is not None:  # the replica is done with the windows, answered in time or not
                self._arena.release(slot)
            future = self._pending.pop(call_id, None)
            if future is None or future.done():
                continue  # the caller gave up (deadline) before the answer came
            if status == OK:
                future.set_result(payload)
            else:
                future.set_exception(ChannelError(bytes(payload).decode(errors="replace")))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._arena, self._slots = None, {}
        self._fail_all(ChannelLost(f"connection lost: {exc}" if exc else "connection closed"))

    def _fail_all(self, error: Exception) -> None:
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(error)

    @property
    def shares_memory(self) -> bool:
        return self._arena is not None

    async def share_memory(self, size: int = ARENA_BYTES) -> bool:
        """Send the replica (on this node) an arena for the windows of later calls; whether it
        took it. Where it cannot, the calls carry their windows as before."""
        try:
            arena = Arena(size)
        except OSError:
            logger.warning("no shared memory for a channel arena: calls carry their windows", exc_info=True)
            return False
        try:
            async with asyncio.timeout(ATTACH_TIMEOUT_S):
                await self._send(ATTACH, arena.path.encode())
        except (ChannelError, ChannelLost, TimeoutError) as exc:
            logger.warning("the replica did not map the channel arena (%s): calls carry their windows", exc)
            return False
        finally:
            arena.close_fd()
        self._arena = arena
        return True

    async def call(self, windows: np.ndarray) -> memoryview:
        """The replica's reply payload (its predictions) for `windows`."""
        if self.closed:
            raise ChannelLost("connection closed")
        call_id = self._next_id = self._next_id % (IN_ARENA - 1) + 1  # 1 .. 2^31 - 1: not ATTACH, no IN_ARENA bit
        slot = self._arena.put(windows) if self._arena is not None else None
        if slot is None:
            return await self._send(call_id, encode(windows))
        call_id |= IN_ARENA
        self._slots[call_id] = slot
        return await self._send(call_id, ARENA_REF.pack(slot.start, slot.nbytes))

    async def _send(self, call_id: int, payload: bytes) -> memoryview:
        future = asyncio.get_running_loop().create_future()
        self._pending[call_id] = future
        self._transport.write(CALL.pack(call_id, len(payload)) + payload)
        try:
            return await future
        finally:
            self._pending.pop(call_id, None)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


_REFUSED = object()  # DirectMember._call: the replica could not be reached, and was sent nothing


class DirectMember:
    """Calls one member version over the direct channels of its replicas.

    Which replicas there are is Serve's word: `choose` asks Serve's own request router for a
    replica (over those it knows to be running and healthy), at most once per `refresh_s` and in
    the background: a choice per call cost the router half a channel call's CPU under `make
    serve`'s settings and four to five times one under Ray's defaults (BENCHMARKS.md). A replica
    Serve has not chosen in `forget_after` refreshes is forgotten. Each call goes to the known
    replica with the fewest of this caller's calls in flight (ties at random), so placement and
    replacement stay Serve's while the balancing sees the calls Serve does not. A replica that
    refuses a connection is forgotten until Serve names it again, and the call goes to the next
    known one. When no replica has a reachable channel, or a connection is lost mid-call, the
    call goes through `fallback` (Serve's own path), which reaches the other replicas: a replica
    that dies costs a detour. When the replica that died was the only one reachable, the call
    and those after it fail at once (ChannelLost) until Serve names another replica or a call
    succeeds: Serve's path would hold them until a new replica runs, and the router leaves the
    member out of answers meanwhile.
    """

    def __init__(self, choose: Callable[[], Awaitable[Endpoint | None]],
                 fallback: Callable[[np.ndarray], Awaitable[np.ndarray]],
                 refresh_s: float = REFRESH_S, forget_after: int = FORGET_AFTER) -> None:
        self._choose = choose
        self._fallback = fallback
        self._refresh_s = refresh_s
        self._forget_after = forget_after
        self._chosen: dict[Endpoint, int] = {}  # replica -> the refresh in which Serve last chose it
        self._refreshes = 0
        self._refresh_due = 0.0
        self._refreshing: asyncio.Task[None] | None = None
        self._connections: dict[Endpoint, ChannelConnection] = {}
        self._connecting: dict[Endpoint, asyncio.Task[ChannelConnection]] = {}
        self._skip_until: dict[Endpoint, float] = {}
        # This caller's calls per replica, counted from the choice rather than the send: calls still
        # waiting for a connection are in flight too, or concurrent first calls would pick one replica.
        self._in_flight: dict[Endpoint, int] = {}
        # The replica whose connection dropped mid-call, and those that refused one since, until a
        # call succeeds or Serve names another replica. Not empty: the member is lost, as its replica
        # died and Serve's path would hold calls until a new one runs.
        self._lost: set[Endpoint] = set()

    async def _refresh(self) -> None:
        try:
            endpoint = await self._choose()
        except Exception:  # noqa: BLE001 - keep the replicas known so far; the next refresh asks again
            logger.warning("could not ask Serve for a replica", exc_info=True)
            return
        finally:
            self._refreshing = None
        self._refreshes += 1
        if endpoint is not None:
            self._chosen[endpoint] = self._refreshes
            if endpoint not in self._lost:
                self._lost.clear()
        for known, when in list(self._chosen.items()):
            if self._refreshes - when > self._forget_after:
                del self._chosen[known]
        # Replicas come and go for as long as the router runs (autoscaling, deploys): what the
        # gone ones left must not pile up. One named again connects anew.
        for gone in [e for e in self._connections if e not in self._chosen and not self._in_flight.get(e)]:
            self._connections.pop(gone).close()
        now = time.monotonic()
        for endpoint in [e for e, until in self._skip_until.items() if until <= now]:
            del self._skip_until[endpoint]

    async def _endpoint(self) -> Endpoint | None:
        now = time.monotonic()
        if now >= self._refresh_due and self._refreshing is None:
            self._refresh_due = now + self._refresh_s
            self._refreshing = asyncio.get_running_loop().create_task(self._refresh())
        # The first call waits for Serve's first answer; once lost, calls do not wait for a new replica.
        if not self._chosen and self._refreshing is not None and not self._lost:
            await asyncio.shield(self._refreshing)
        return self._least_loaded(now)

    def _least_loaded(self, now: float) -> Endpoint | None:
        best, best_load = None, (0, 0.0)
        for endpoint in self._chosen:
            if self._skip_until.get(endpoint, 0.0) > now:
                continue
            load = (self._in_flight.get(endpoint, 0), random.random())
            if best is None or load < best_load:
                best, best_load = endpoint, load
        return best

    async def _connection(self, endpoint: Endpoint) -> ChannelConnection | None:
        connection = self._connections.get(endpoint)
        if connection is not None and not connection.closed:
            return connection
        if self._skip_until.get(endpoint, 0.0) > time.monotonic():
            return None
        task = self._connecting.get(endpoint)
        if task is None:  # concurrent calls share one connection attempt
            loop = asyncio.get_running_loop()
            task = self._connecting[endpoint] = loop.create_task(self._open(endpoint))
            task.add_done_callback(partial(self._opened, endpoint))
        try:
            return await asyncio.shield(task)
        except OSError:
            self._skip_until[endpoint] = time.monotonic() + RETRY_AFTER_S
            self._chosen.pop(endpoint, None)  # nothing listens there: known again only if Serve names it again
            if self._lost:
                self._lost.add(endpoint)
            return None

    def _opened(self, endpoint: Endpoint, task: asyncio.Task[ChannelConnection]) -> None:
        # Kept here, not by the calls awaiting it: every one of them may have given up (their
        # deadline) before a slow connect ended, and the connection would be open and unknown.
        self._connecting.pop(endpoint, None)
        if not task.cancelled() and task.exception() is None:
            self._connections[endpoint] = task.result()

    @staticmethod
    async def _open(endpoint: Endpoint) -> ChannelConnection:
        _, connection = await asyncio.get_running_loop().create_connection(ChannelConnection, endpoint.host,
                                                                           endpoint.port)
        if endpoint.same_node:
            try:
                await connection.share_memory()
            except BaseException:  # cancelled (the caller closing): no one else would close it
                connection.close()
                raise
        return connection

    def replicas(self) -> int:
        """The replicas known to take calls now (at least one: Serve's path has one too)."""
        now = time.monotonic()
        return max(1, sum(1 for endpoint in self._chosen if self._skip_until.get(endpoint, 0.0) <= now))

    async def predict(self, windows: np.ndarray) -> np.ndarray:
        # A replica that refuses the connection was sent nothing (it died, or was replaced, before
        # Serve stopped naming it): the next known one takes the call. Each refusal skips its
        # replica, so this ends. A connection lost mid-call goes to Serve's path instead: the call
        # may be what ended the replica, and it should not take the others down one by one.
        while (endpoint := await self._endpoint()) is not None:
            body = await self._call(endpoint, windows)
            if body is not _REFUSED:
                break
        else:
            body = None
        if body is not None:
            self._lost.clear()
            return decode_predictions(body, len(windows))
        if self._lost and self._least_loaded(time.monotonic()) is None:
            # Serve's path would hold the call until a new replica runs (seconds): the member is
            # left out of answers at once instead of at the deadline.
            raise ChannelLost("the replica's connection was lost and Serve names no other replica yet")
        return await self._fallback(windows)

    async def _call(self, endpoint: Endpoint, windows: np.ndarray) -> memoryview | object | None:
        """The reply of the replica at `endpoint`, `_REFUSED` when it could not be reached, or None
        when the connection was lost mid-call."""
        self._in_flight[endpoint] = self._in_flight.get(endpoint, 0) + 1
        try:
            connection = await self._connection(endpoint)
            if connection is None:
                return _REFUSED
            try:
                return await connection.call(windows)
            except ChannelLost:
                self._connections.pop(endpoint, None)
                self._skip_until[endpoint] = time.monotonic() + RETRY_AFTER_S
                self._lost.add(endpoint)
                return None
        finally:
            left = self._in_flight.pop(endpoint) - 1
            if left:
                self._in_flight[endpoint] = left

    def close(self) -> None:
        for connection in self._connections.values():
            connection.close()
        for task in self._connecting.values():
            task.cancel()
        if self._refreshing is not None:
            self._refreshing.cancel()
