"""A direct channel to a member replica: framed float32 over one TCP connection, no HTTP.

Serve still places, scales, health-checks and restarts the replicas; only the bytes of a call
take a shorter road. Over HTTP through Serve's ingress a one-row call cost 0.55 CPU ms in the
router, 1.0 ms of Serve's request path in the replica beyond the model, and 0.25 ms in HAProxy
(bench/call_cost.py); here both ends parse an 8-byte header.

Frames: a call is `<call id u32><payload bytes u32>` then `ensemble.wire` windows; a reply is
`<call id u32><status u8><payload bytes u32>` then predictions (status 0) or a UTF-8 error
message. Calls on one connection are answered in any order, so concurrent calls from one router
are merged by the member's own batching.
"""
from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Awaitable, Callable

import numpy as np

from ensemble.wire import decode_predictions, encode

CALL = struct.Struct("<II")
REPLY = struct.Struct("<IBI")
OK, FAILED = 0, 1
MAX_FRAME_BYTES = 256 * 1024 * 1024
RETRY_AFTER_S = 1.0  # an endpoint that refused or dropped a connection is skipped this long

Endpoint = tuple[str, int]
FrameHandler = Callable[[bytes], Awaitable[bytes]]


class ChannelError(RuntimeError):
    """The member replica answered the call with an error (its message)."""


class ChannelLost(ConnectionError):
    """The connection closed or could not be opened: the call may be sent elsewhere."""


class _Frames:
    """Splits a byte stream into (header fields, payload) frames."""

    def __init__(self, header: struct.Struct) -> None:
        self._header = header
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[tuple[int, ...], bytes]]:
        self._buffer += data
        frames, start, size = [], 0, self._header.size
        while len(self._buffer) - start >= size:
            fields = self._header.unpack_from(self._buffer, start)
            length = fields[-1]
            if length > MAX_FRAME_BYTES:
                raise ValueError(f"frame of {length} bytes exceeds {MAX_FRAME_BYTES}")
            end = start + size + length
            if len(self._buffer) < end:
                break
            frames.append((fields, bytes(self._buffer[start + size:end])))
            start = end
        del self._buffer[:start]
        return frames


class _ServerProtocol(asyncio.Protocol):
    def __init__(self, handler: FrameHandler, server: ChannelServer) -> None:
        self._handler = handler
        self._server = server
        self._frames = _Frames(CALL)
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            frames = self._frames.feed(data)
        except ValueError:
            self._transport.close()
            return
        loop = asyncio.get_running_loop()
        for (call_id, _), payload in frames:
            loop.create_task(self._answer(call_id, payload))

    async def _answer(self, call_id: int, payload: bytes) -> None:
        self._server.count(1)
        try:
            body, status = await self._handler(payload), OK
        except Exception as exc:  # noqa: BLE001 - the caller gets the message, the replica keeps serving
            body, status = f"{type(exc).__name__}: {exc}".encode(), FAILED
        finally:
            self._server.count(-1)
            self._server.answered += 1
        if not self._transport.is_closing():
            self._transport.write(REPLY.pack(call_id, status, len(body)) + body)


class ChannelServer:
    """Serves `handler` (payload bytes -> reply bytes) on a TCP port of `host`."""

    def __init__(self, handler: FrameHandler) -> None:
        self._handler = handler
        self._server: asyncio.Server | None = None
        self.in_flight = 0  # calls being answered now
        self.answered = 0  # calls answered since the start
        self._since = self._changed = time.monotonic()
        self._area = 0.0  # in-flight calls integrated over time since `_since`

    def count(self, delta: int) -> None:
        now = time.monotonic()
        self._area += self.in_flight * (now - self._changed)
        self._changed, self.in_flight = now, self.in_flight + delta

    def mean_in_flight(self) -> float:
        """Calls in flight on average since the last time this was asked (the replica's load:
        Serve's autoscaler does not see these calls, so the replica reports them)."""
        self.count(0)
        now = time.monotonic()
        mean = self._area / (now - self._since) if now > self._since else float(self.in_flight)
        self._since, self._area = now, 0.0
        return mean

    async def start(self, host: str, port: int = 0) -> Endpoint:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _ServerProtocol(self._handler, self), host, port)
        return host, self._server.sockets[0].getsockname()[1]

    def close(self) -> None:
        if self._server is not None:
            self._server.close()


class ChannelConnection(asyncio.Protocol):
    """The caller's end: many calls in flight, each matched to its reply by id."""

    def __init__(self) -> None:
        self._frames = _Frames(REPLY)
        self._pending: dict[int, asyncio.Future[bytes]] = {}
        self._next_id = 0
        self._transport: asyncio.Transport | None = None
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
            future = self._pending.pop(call_id, None)
            if future is None or future.done():
                continue  # the caller gave up (deadline) before the answer came
            if status == OK:
                future.set_result(payload)
            else:
                future.set_exception(ChannelError(payload.decode(errors="replace")))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail_all(ChannelLost(f"connection lost: {exc}" if exc else "connection closed"))

    def _fail_all(self, error: Exception) -> None:
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(error)

    async def call(self, payload: bytes) -> bytes:
        if self.closed:
            raise ChannelLost("connection closed")
        call_id = self._next_id = (self._next_id + 1) & 0xFFFFFFFF
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


class DirectMember:
    """Calls one member version over the direct channel of the replica that `choose` names.

    `choose` is Serve's own replica choice (its request router, over the replicas it knows to
    be running), so placement, load balancing and replacement stay Serve's. When the chosen
    replica has no channel, cannot be reached, or its connection is lost mid-call, the call
    goes through `fallback` (Serve's own path): a replica that dies costs a detour, never a
    failed answer.
    """

    def __init__(self, choose: Callable[[], Awaitable[Endpoint | None]],
                 fallback: Callable[[np.ndarray], Awaitable[np.ndarray]]) -> None:
        self._choose = choose
        self._fallback = fallback
        self._connections: dict[Endpoint, ChannelConnection] = {}
        self._connecting: dict[Endpoint, asyncio.Task[ChannelConnection]] = {}
        self._skip_until: dict[Endpoint, float] = {}

    async def _connection(self, endpoint: Endpoint) -> ChannelConnection | None:
        connection = self._connections.get(endpoint)
        if connection is not None and not connection.closed:
            return connection
        if self._skip_until.get(endpoint, 0.0) > time.monotonic():
            return None
        task = self._connecting.get(endpoint)
        if task is None:  # concurrent calls share one connection attempt
            loop = asyncio.get_running_loop()
            task = self._connecting[endpoint] = loop.create_task(loop.create_connection(ChannelConnection, *endpoint))
            task.add_done_callback(lambda _: self._connecting.pop(endpoint, None))
        try:
            _, connection = await asyncio.shield(task)
        except OSError:
            self._skip_until[endpoint] = time.monotonic() + RETRY_AFTER_S
            return None
        self._connections[endpoint] = connection
        return connection

    async def predict(self, windows: np.ndarray) -> np.ndarray:
        endpoint = await self._choose()
        connection = None if endpoint is None else await self._connection(endpoint)
        if connection is None:
            return await self._fallback(windows)
        try:
            body = await connection.call(encode(windows))
        except ChannelLost:
            self._connections.pop(endpoint, None)
            self._skip_until[endpoint] = time.monotonic() + RETRY_AFTER_S
            return await self._fallback(windows)
        return decode_predictions(body, len(windows))

    def close(self) -> None:
        for connection in self._connections.values():
            connection.close()
        for task in self._connecting.values():
            task.cancel()
