"""The direct channel to member replicas, over real loopback sockets (no Ray)."""
from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable
from functools import partial
from typing import Any

import numpy as np
import pytest

from ensemble.arena import ArenaError
from ensemble.batching import predict_sliced
from ensemble.channel import (ARENA_REF, CALL, IN_ARENA, MAX_FRAME_BYTES, OK, REPLY, ChannelError, ChannelLost,
                              ChannelServer, DirectMember, Endpoint, FramesHandler, _Frames, merged_model_calls)
from ensemble.wire import decode_predictions, decode_windows, encode

WINDOW, FEATURES = 4, 2


def run(coro: Awaitable[Any], loop: str = "asyncio") -> Any:
    """Runs `coro` on asyncio's own loop or on uvloop, which Serve's replicas run."""
    runner = pytest.importorskip("uvloop").run if loop == "uvloop" else asyncio.run
    return runner(asyncio.wait_for(coro, 20))


def windows(n: int, start: float = 0.0) -> np.ndarray:
    return (start + np.arange(n * WINDOW * FEATURES, dtype=np.float32)).reshape(n, WINDOW, FEATURES)


class RowSums:
    """A model: each window's sum; counts its calls and their sizes."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        self.calls.append(len(rows))
        return rows.sum(axis=(1, 2))


def decode(payload: bytes) -> np.ndarray:
    return decode_windows(payload, WINDOW, FEATURES)


row_sums = merged_model_calls(decode, RowSums(), max_rows=256)


def held_until(release: asyncio.Event) -> FramesHandler:
    """A replica whose answers wait for `release`."""
    async def held(payloads: list[bytes]) -> list[bytes | Exception]:
        await release.wait()
        return await row_sums(payloads)
    return held


class Fallback:
    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, rows: np.ndarray) -> np.ndarray:
        self.calls += 1
        return np.full(len(rows), -1.0, dtype=np.float32)


async def on_this_node(server: ChannelServer) -> Endpoint:
    """`server` started, as Serve names it to a caller on its node."""
    return (await server.start("127.0.0.1"))._replace(same_node=True)


class Choices:
    """Serve's request router, as a DirectMember sees it: each answer in turn, the last one after."""

    def __init__(self, *endpoints: Endpoint | None) -> None:
        self.endpoints = endpoints
        self.asked = 0

    async def __call__(self) -> Endpoint | None:
        self.asked += 1
        return self.endpoints[min(self.asked, len(self.endpoints)) - 1]


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_concurrent_calls_on_one_connection_each_get_their_own_answer(loop: str):
    async def scenario() -> None:
        server = ChannelServer(row_sums)
        endpoint = await server.start("127.0.0.1")
        fallback = Fallback()
        member = DirectMember(Choices(endpoint), fallback)
        blocks = [windows(n, start=10.0 * n) for n in (1, 3, 64, 2, 7)] * 4
        answers = await asyncio.gather(*(member.predict(block) for block in blocks))
        for block, answer in zip(blocks, answers):
            assert np.allclose(answer, block.sum(axis=(1, 2)))
        assert fallback.calls == 0
        member.close()
        server.close()

    run(scenario(), loop)


def test_serve_is_asked_for_a_replica_once_per_refresh_not_once_per_call():
    async def scenario() -> None:
        server = ChannelServer(row_sums)
        choices = Choices(await server.start("127.0.0.1"))
        member = DirectMember(choices, Fallback(), refresh_s=3600.0)
        for n in range(1, 31):
            assert np.allclose(await member.predict(windows(n)), windows(n).sum(axis=(1, 2)))
        assert (choices.asked, server.answered) == (1, 30)
        member.close()
        server.close()

    run(scenario())


def test_calls_waiting_for_a_connection_count_as_in_flight():
    async def scenario() -> None:
        first, second = ChannelServer(row_sums), ChannelServer(row_sums)
        choices = Choices(await first.start("127.0.0.1"), await second.start("127.0.0.1"))
        member = DirectMember(choices, Fallback(), refresh_s=0.0)
        while choices.asked < 2:  # Serve names the second replica while the first answers
            await member.predict(windows(1))
        # Connected to the first only: the calls sent to the second wait for its connection, and
        # the calls after them must see those as in flight.
        before = (first.answered, second.answered)
        await asyncio.gather(*(member.predict(windows(1)) for _ in range(8)))
        assert (first.answered - before[0], second.answered - before[1]) == (4, 4)
        member.close()
        first.close()
        second.close()

    run(scenario())


def test_each_call_goes_to_the_known_replica_with_the_fewest_calls_in_flight():
    async def scenario() -> None:
        release = asyncio.Event()
        held, free = ChannelServer(held_until(release)), ChannelServer(row_sums)
        choices = Choices(await held.start("127.0.0.1"), await free.start("127.0.0.1"))
        member = DirectMember(choices, Fallback(), refresh_s=0.0)
        release.set()
        assert member.replicas() == 1  # none known yet: Serve's path has one
        while choices.asked < 2:  # until Serve has named both replicas
            await member.predict(windows(1))
        assert member.replicas() == 2
        release.clear()
        before = (held.answered, free.answered)
        calls = [asyncio.ensure_future(member.predict(windows(2))) for _ in range(2)]
        while held.load.now + free.answered - before[1] < 2:  # one stalls, the other is answered
            await asyncio.sleep(0.001)
        release.set()
        await asyncio.gather(*calls)
        assert (held.answered - before[0], free.answered - before[1]) == (1, 1)
        member.close()
        held.close()
        free.close()

    run(scenario())


def test_a_replica_serve_stops_choosing_is_forgotten():
    async def scenario() -> None:
        old, new = ChannelServer(row_sums), ChannelServer(row_sums)
        choices = Choices(await old.start("127.0.0.1"), await new.start("127.0.0.1"))
        member = DirectMember(choices, Fallback(), refresh_s=0.0, forget_after=2)
        for _ in range(100):
            await member.predict(windows(1))
            if choices.asked > 4:  # Serve named only the new replica in the last three refreshes
                break
        answered = old.answered
        await asyncio.gather(*(member.predict(windows(1)) for _ in range(10)))
        assert old.answered == answered and member.replicas() == 1
        # Its connection is closed and dropped, as each gone replica's would be for as long as the router runs.
        assert list(member._connections) == [choices.endpoints[1]]
        member.close()
        old.close()
        new.close()

    run(scenario())


def test_a_connection_that_opens_after_its_calls_gave_up_is_kept_and_closed_with_the_member(
        monkeypatch: pytest.MonkeyPatch):
    release = asyncio.Event()
    opened = []
    open_now = DirectMember._open

    async def slow_open(endpoint: Endpoint):  # a replica whose loop is busy when the connection comes
        await release.wait()
        opened.append(await open_now(endpoint))
        return opened[-1]

    monkeypatch.setattr(DirectMember, "_open", staticmethod(slow_open))

    async def scenario() -> None:
        server = ChannelServer(row_sums)
        member = DirectMember(Choices(await on_this_node(server)), Fallback())
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await member.predict(windows(1))
        release.set()
        while not opened or member._connecting:  # the attempt ends with no call waiting for it
            await asyncio.sleep(0.001)
        assert np.allclose(await member.predict(windows(3)), windows(3).sum(axis=(1, 2)))
        assert len(opened) == 1 and list(member._connections.values()) == opened  # used, not opened again
        member.close()
        while not opened[0].closed:  # its transport reports the close on the loop's next turn
            await asyncio.sleep(0.001)
        server.close()

    run(scenario())


def test_calls_that_arrive_together_share_model_calls_up_to_the_row_limit():
    model = RowSums()
    answer = merged_model_calls(decode, model, max_rows=8)
    blocks = [windows(n, start=n) for n in (3, 4, 2, 9, 1)]
    replies = run(answer([encode(block) for block in blocks]))
    assert model.calls == [7, 2, 9, 1]  # 3+4, then 2 (2+9 > 8), 9 alone (over the limit), then 1 (9+1 > 8)
    for block, reply in zip(blocks, replies):
        assert np.allclose(decode_predictions(reply, len(block)), block.sum(axis=(1, 2)))



def test_a_member_slices_a_call_larger_than_its_row_limit():
    """As deployments.model serves: a member's max_batch_rows bounds every model call, whatever
    its callers send (under member applications the router's calls carry up to 256 rows)."""
    model = RowSums()
    answer = merged_model_calls(decode, partial(predict_sliced, model, max_rows=8), max_rows=8)
    blocks = [windows(n, start=n) for n in (3, 4, 2, 17)]
    replies = run(answer([encode(block) for block in blocks]))
    assert model.calls == [7, 2, 8, 8, 1]
    for block, reply in zip(blocks, replies):
        assert np.allclose(decode_predictions(reply, len(block)), block.sum(axis=(1, 2)))

def test_a_malformed_call_or_a_failed_model_call_fails_only_its_own_calls():
    def model(rows: np.ndarray) -> np.ndarray:
        if len(rows) > 4:
            raise ValueError("too many")
        return rows.sum(axis=(1, 2))

    answer = merged_model_calls(decode, model, max_rows=5)
    replies = run(answer([encode(windows(1)), b"\x00" * 3, encode(windows(2)), encode(windows(5)), encode(windows(1))]))
    assert [type(reply).__name__ for reply in replies] == ["bytes", "WireError", "bytes", "ValueError", "bytes"]
    assert np.allclose(decode_predictions(replies[2], 2), windows(2).sum(axis=(1, 2)))


def test_calls_received_back_to_back_reach_the_model_together_and_a_lone_call_waits_for_none():
    async def scenario() -> None:
        model = RowSums()
        server = ChannelServer(merged_model_calls(decode, model, max_rows=256))
        reader, writer = await asyncio.open_connection(*(await server.start("127.0.0.1"))[:2])
        blocks = [windows(n, start=n) for n in (2, 3, 4)]
        stream = b"".join(CALL.pack(i, len(encode(b))) + encode(b) for i, b in enumerate(blocks, start=1))
        cut = CALL.size + len(encode(blocks[0])) + 5  # the first call and a piece of the second
        writer.write(stream[:cut])
        await writer.drain()
        for _ in range(20):  # the server reads the piece on this loop meanwhile
            await asyncio.sleep(0)
        assert model.calls == []  # the second call is still arriving: the first waits for it
        writer.write(stream[cut:])
        replies = {}
        for _ in blocks:
            call_id, status, size = REPLY.unpack(await reader.readexactly(REPLY.size))
            replies[call_id] = (status, await reader.readexactly(size))
        assert model.calls == [9]  # one model call for the three
        for i, block in enumerate(blocks, start=1):
            assert np.allclose(decode_predictions(replies[i][1], len(block)), block.sum(axis=(1, 2)))
        writer.write(CALL.pack(7, len(encode(blocks[0]))) + encode(blocks[0]))  # alone: answered at once
        call_id, status, size = REPLY.unpack(await reader.readexactly(REPLY.size))
        await reader.readexactly(size)
        assert (call_id, status, model.calls) == (7, OK, [9, 2])
        writer.close()
        server.close()

    run(scenario())


def test_frames_split_anywhere_in_the_stream_are_reassembled():
    frames = _Frames(CALL)
    stream = b"".join(CALL.pack(i, len(body)) + body for i, body in enumerate([b"abc", b"", b"x" * 1000]))
    received = [frame for byte in range(len(stream)) for frame in frames.feed(stream[byte:byte + 1])]
    assert received == [((0, 3), b"abc"), ((1, 0), b""), ((2, 1000), b"x" * 1000)]


def test_frames_stay_intact_while_later_reads_arrive_in_any_sizes():
    bodies = [bytes([i]) * size for i, size in enumerate([300_000, 7, 0, 70_000, 1, 5_000])]
    stream = b"".join(CALL.pack(i, len(body)) + body for i, body in enumerate(bodies))
    rng = random.Random(3)
    for _ in range(20):
        frames, received, at = _Frames(CALL), [], 0
        while at < len(stream):  # reads of 1 byte to 128 KiB, frames ending anywhere in them
            size = rng.choice([1, 5, 100, 4096, 65536, 131072])
            received += frames.feed(stream[at:at + size])
            at += size
        # The payloads are views: each must still hold its own bytes after every later read.
        assert [(fields, bytes(payload)) for fields, payload in received] == [
            ((i, len(body)), body) for i, body in enumerate(bodies)]
        assert not frames.partial


def test_a_frame_announcing_more_than_the_limit_is_refused_once_its_header_is_in():
    header = CALL.pack(1, MAX_FRAME_BYTES + 1)
    frames = _Frames(CALL)
    assert frames.feed(header[:3]) == []
    with pytest.raises(ValueError, match="exceeds"):
        frames.feed(header[3:])
    with pytest.raises(ValueError, match="exceeds"):
        _Frames(CALL).feed(header + b"x")


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_caller_on_the_replicas_node_sends_its_windows_through_shared_memory(loop: str):
    async def scenario() -> None:
        model = RowSums()
        server = ChannelServer(merged_model_calls(decode, model, max_rows=256))
        fallback = Fallback()
        member = DirectMember(Choices(await on_this_node(server)), fallback)
        # 200 000 windows of 4x2 (6.4 MB) do not fit the 4 MiB arena: that call goes in its frame.
        blocks = [windows(n, start=n) for n in (1, 64, 3, 256, 200_000)] * 3
        answers = await asyncio.gather(*(member.predict(block) for block in blocks))
        for block, answer in zip(blocks, answers):
            assert np.allclose(answer, block.sum(axis=(1, 2)))
        (connection,) = member._connections.values()
        assert connection.shares_memory and connection._arena.slots_in_use == 0 and fallback.calls == 0
        assert sum(model.calls) == sum(len(block) for block in blocks)
        member.close()
        server.close()

    run(scenario(), loop)


def test_a_replica_that_cannot_map_the_arena_gets_the_windows_in_the_frames(monkeypatch: pytest.MonkeyPatch):
    def refuse(path: str) -> memoryview:
        raise ArenaError(f"{path} is not a channel arena")

    monkeypatch.setattr("ensemble.channel.open_arena", refuse)

    async def scenario() -> None:
        server = ChannelServer(row_sums)
        member = DirectMember(Choices(await on_this_node(server)), Fallback())
        assert np.allclose(await member.predict(windows(5)), windows(5).sum(axis=(1, 2)))
        (connection,) = member._connections.values()
        assert not connection.shares_memory
        member.close()
        server.close()

    run(scenario())


def test_a_call_given_up_keeps_its_windows_in_the_arena_until_the_replica_answers():
    async def scenario() -> None:
        release = asyncio.Event()
        server = ChannelServer(held_until(release))
        member = DirectMember(Choices(await on_this_node(server)), Fallback())
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await member.predict(windows(3))
        (connection,) = member._connections.values()
        assert connection._arena.slots_in_use == 1  # the replica may still be reading them
        release.set()
        assert np.allclose(await member.predict(windows(2, 5.0)), windows(2, 5.0).sum(axis=(1, 2)))
        assert connection._arena.slots_in_use == 0
        member.close()
        server.close()

    run(scenario())


def test_a_call_in_an_arena_never_attached_closes_the_connection():
    async def scenario() -> None:
        server = ChannelServer(row_sums)
        reader, writer = await asyncio.open_connection(*(await server.start("127.0.0.1"))[:2])
        writer.write(CALL.pack(1 | IN_ARENA, ARENA_REF.size) + ARENA_REF.pack(0, 64))
        assert await reader.read() == b""
        writer.close()
        server.close()

    run(scenario())


class ChosenReplica:
    """What `handle.choose_replica` yields: the replica's published metadata."""

    def __init__(self, metadata: dict[str, Any]) -> None:
        self.replica_metadata = metadata

    async def __aenter__(self) -> ChosenReplica:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


class OneReplicaHandle:
    def __init__(self, metadata: dict[str, Any]) -> None:
        self.metadata = metadata

    def choose_replica(self, _reserve: bool) -> ChosenReplica:
        return ChosenReplica(self.metadata)


def test_the_router_shares_memory_only_with_replicas_on_its_node():
    from deployments.router import chosen_channel

    def choose(metadata: dict[str, Any], node_id: str | None) -> Endpoint | None:
        return run(chosen_channel(OneReplicaHandle(metadata), node_id))

    published = {"channel": ["10.0.0.5", 4321], "node_id": "node-a"}
    assert choose(published, "node-a") == Endpoint("10.0.0.5", 4321, same_node=True)
    assert choose(published, "node-b") == Endpoint("10.0.0.5", 4321, same_node=False)
    assert choose(published, None) == Endpoint("10.0.0.5", 4321, same_node=False)
    assert choose({"channel": ["10.0.0.5", 4321]}, "node-a").same_node is False
    assert choose({}, "node-a") is None


def test_a_model_error_reaches_the_caller_and_is_not_retried_elsewhere():
    def failing(rows: np.ndarray) -> np.ndarray:
        raise ValueError("bad weights")

    async def scenario() -> None:
        server = ChannelServer(merged_model_calls(decode, failing, max_rows=256))
        fallback = Fallback()
        member = DirectMember(Choices(await server.start("127.0.0.1")), fallback)
        with pytest.raises(ChannelError, match="ValueError: bad weights"):
            await member.predict(windows(2))
        assert fallback.calls == 0
        member.close()
        server.close()

    run(scenario())


def test_no_channel_or_an_unreachable_one_goes_through_serves_path():
    async def scenario() -> None:
        fallback = Fallback()
        assert (await DirectMember(Choices(None), fallback).predict(windows(3))).tolist() == [-1.0] * 3
        server = ChannelServer(row_sums)
        endpoint = await server.start("127.0.0.1")
        server.close()
        await server._server.wait_closed()
        unreachable = DirectMember(Choices(endpoint), fallback)
        assert (await unreachable.predict(windows(2))).tolist() == [-1.0] * 2
        await unreachable.predict(windows(2))  # skipped for RETRY_AFTER_S, not reconnected
        assert fallback.calls == 3

    run(scenario())


def test_a_replica_that_refuses_the_connection_is_forgotten_and_the_call_goes_to_another():
    async def scenario() -> None:
        gone, live = ChannelServer(row_sums), ChannelServer(row_sums)
        gone_endpoint = await gone.start("127.0.0.1")
        gone.close()  # as a replica whose process died while Serve still names it
        await gone._server.wait_closed()
        choices = Choices(gone_endpoint, await live.start("127.0.0.1"), gone_endpoint)
        fallback = Fallback()
        member = DirectMember(choices, fallback, refresh_s=0.0)
        while choices.asked < 2:  # until Serve has named both
            await member.predict(windows(1))
        answered = live.answered
        results = [(await member.predict(windows(2, start=i))).tolist() for i in range(20)]
        assert results == [windows(2, start=i).sum(axis=(1, 2)).tolist() for i in range(20)]
        assert (live.answered - answered, fallback.calls) == (20, 0)
        assert member.replicas() == 1  # named again by Serve, and refused again: skipped
        member.close()
        live.close()

    run(scenario())


class Named:
    """Serve's request router naming one replica, which the test changes."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint

    async def __call__(self) -> Endpoint:
        return self.endpoint


async def lose_mid_call(member: DirectMember, server: ChannelServer) -> asyncio.Future[np.ndarray]:
    """A call that reached `server`, whose connections then drop as when its process dies."""
    call = asyncio.ensure_future(member.predict(windows(2)))
    while server.load.now == 0:
        await asyncio.sleep(0.001)
    for connection in member._connections.values():
        connection._transport.abort()
    return call


def test_a_connection_lost_mid_call_goes_through_serves_path_to_another_replica():
    async def scenario() -> None:
        release = asyncio.Event()
        release.set()
        dying, live = ChannelServer(held_until(release)), ChannelServer(row_sums)
        serve_names = Named(await dying.start("127.0.0.1"))
        fallback = Fallback()
        member = DirectMember(serve_names, fallback, refresh_s=0.0)
        await member.predict(windows(1))  # Serve named the dying replica, then the live one
        serve_names.endpoint = live_endpoint = await live.start("127.0.0.1")
        while member.replicas() < 2:
            await member.predict(windows(1))
        release.clear()
        member._in_flight[live_endpoint] = 1  # so the next call goes to the dying replica
        call = await lose_mid_call(member, dying)
        del member._in_flight[live_endpoint]
        assert (await call).tolist() == [-1.0, -1.0]  # Serve's path: it may be what ended the replica
        assert fallback.calls == 1
        assert (await member.predict(windows(1))).tolist() == windows(1).sum(axis=(1, 2)).tolist()
        release.set()
        dying.close()
        live.close()

    run(scenario())


def test_a_lost_connection_to_the_only_replica_fails_calls_at_once_until_serve_names_another():
    async def scenario() -> None:
        stall = asyncio.Event()
        dying = ChannelServer(held_until(stall))
        serve_names = Named(await dying.start("127.0.0.1"))
        fallback = Fallback()
        member = DirectMember(serve_names, fallback, refresh_s=0.0)
        call = await lose_mid_call(member, dying)
        with pytest.raises(ChannelLost, match="no other replica"):
            await call
        dying.close()
        await dying._server.wait_closed()
        member._skip_until.clear()  # past RETRY_AFTER_S: Serve still names it, and it refuses
        for _ in range(3):
            with pytest.raises(ChannelLost, match="no other replica"):
                await member.predict(windows(1))
        assert fallback.calls == 0  # Serve's path would hold them until a new replica runs
        replacement = ChannelServer(row_sums)
        serve_names.endpoint = await replacement.start("127.0.0.1")
        while True:  # until a refresh names the new replica
            try:
                result = await member.predict(windows(1))
                break
            except ChannelLost:
                await asyncio.sleep(0)
        assert result.tolist() == windows(1).sum(axis=(1, 2)).tolist()
        assert (replacement.answered, fallback.calls) == (1, 0)
        stall.set()
        replacement.close()

    run(scenario())


def test_a_call_given_up_at_its_deadline_leaves_the_connection_usable():
    async def scenario() -> None:
        release = asyncio.Event()
        server = ChannelServer(held_until(release))
        member = DirectMember(Choices(await server.start("127.0.0.1")), Fallback())
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await member.predict(windows(1))
        release.set()  # its late answer arrives and is dropped
        assert np.allclose(await member.predict(windows(2, 5.0)), windows(2, 5.0).sum(axis=(1, 2)))
        connection = next(iter(member._connections.values()))
        assert connection._pending == {}
        member.close()
        server.close()

    run(scenario())


def test_the_replica_reports_its_mean_calls_in_flight_since_the_last_report():
    async def scenario() -> None:
        release = asyncio.Event()
        server = ChannelServer(held_until(release))
        member = DirectMember(Choices(await server.start("127.0.0.1")), Fallback())
        server.load.mean()
        calls = [asyncio.ensure_future(member.predict(windows(1))) for _ in range(2)]
        while server.load.now < 2:
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.05)
        busy = server.load.mean()
        release.set()
        await asyncio.gather(*calls)
        assert 0 < busy <= 2
        await asyncio.sleep(0.01)
        assert server.load.mean() < busy
        member.close()
        server.close()

    run(scenario())
