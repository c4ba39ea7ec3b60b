"""Serve's HTTP-server callback (`RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`, set by `make serve`).

Serve calls `middlewares` in every process that starts an HTTP server (its proxy, and each
replica that serves HTTP itself behind HAProxy) and wraps that server's whole ASGI app in them,
Serve's own per-request wrapper included. Kept free of Ray and of the router's imports: a
failing import here would stop the ingress.
"""

import asyncio
from collections.abc import Awaitable, Callable
import json
import os
import time

from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

PREDICT_PATH = "/v1/predict"
DISCONNECT_DISABLED = (b"x-request-disconnect-disabled", b"?1")
REQUEST_ID = b"x-request-id"

# A predict body (None: past the limit, unread) and its arrival (`time.perf_counter()`) -> the
# answer's status and JSON.
class ClientLeft:
    """In place of a predict request's body: its client left before the body was read."""


CLIENT_LEFT = ClientLeft()
# Status and JSON body answering a predict body (None: past the limit) arrived at a time.
PredictAnswer = Callable[[bytes | None | ClientLeft, float], Awaitable[tuple[int, bytes]]]
_answer_here: tuple[PredictAnswer, int, asyncio.AbstractEventLoop] | None = None
# The full path of the router's predict route, as Serve routed one to it: its application's
# route prefix, which the replica is not told, and /v1/predict. Until one has come, and for any
# other path (another application's, while HAProxy's routes catch up), Serve routes them.
_predict_path: str | None = None


def answer_predict_here(answer: PredictAnswer, max_body_bytes: int, loop: asyncio.AbstractEventLoop) -> None:
    """Called by the router replica of this process: `PredictAhead` answers its predict requests,
    whose bodies are at most `max_body_bytes`, once `predict_routed_here` has named their path,
    where the HTTP server runs on the router's event loop `loop`. Serve runs the router's code on
    a loop of its own in another thread unless RAY_SERVE_THROUGHPUT_OPTIMIZED is set, and the
    router's queues, semaphores and futures belong to that loop: from the server's loop its calls
    stalled (a 40 ms p50 under HAProxy alone), so there Serve routes predicts to it."""
    global _answer_here
    _answer_here = answer, max_body_bytes, loop


def predict_routed_here(path: str) -> None:
    """Called by the router with the path of a predict request Serve routed to it."""
    global _predict_path
    _predict_path = path


def content_length(headers: list[tuple[bytes, bytes]]) -> int:
    """The body's declared length; 0 where none is declared (a chunked body) or the value is no
    number (which the HTTP server refuses before this)."""
    for name, value in headers:
        if name == b"content-length":
            return int(value) if value.isdigit() else 0
    return 0


def over_the_limit(max_body_bytes: int) -> str:
    return f"body: over the limit of {max_body_bytes} bytes"


async def read_body(receive: Receive, headers: list[tuple[bytes, bytes]], max_body_bytes: int) -> bytes | None:
    """A request's body; None where it is declared or read past `max_body_bytes`, the rest then
    left unread: no request holds more of the router's memory than the limit. Raises
    ClientDisconnect where the client left first."""
    chunks, size, read, more = [], content_length(headers), 0, True
    while more and size <= max_body_bytes:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect
        chunks.append(message.get("body", b""))
        read += len(chunks[-1])
        size, more = max(size, read), message.get("more_body", False)
    return None if size > max_body_bytes else b"".join(chunks)


async def answer_asgi(answer: PredictAnswer, max_body_bytes: int, scope: Scope, receive: Receive, send: Send,
                      headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    """Read a predict request's body (None past `max_body_bytes`), answer it, write the answer
    (with `headers`): bytes in, bytes out. A client that left first is told to `answer` (to be
    counted), and nothing is written."""
    arrived = time.perf_counter()
    try:
        body = await read_body(receive, scope["headers"], max_body_bytes)
    except ClientDisconnect:
        await answer(CLIENT_LEFT, arrived)
        return
    await send_json(send, *await answer(body, arrived), headers)


async def send_json(send: Send, status: int, content: bytes, headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(content)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": content})


# The headers whose values Serve decodes as UTF-8 (ray.serve._private: its request id, timeout,
# disconnect, multiplexing, session and tracing headers), names as Serve compares them.
SERVE_DECODES = frozenset({"x_request_id", "x_request_timeout_seconds", "x_request_disconnect_disabled",
                           "serve_multiplexed_model_id", "traceparent", "tracestate",
                           os.environ.get("RAY_SERVE_SESSION_ID_HEADER_KEY", "x-session-id").lower().replace("-", "_")})


def not_utf8(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """The name of the first header Serve decodes whose value is not UTF-8, if any."""
    for name, value in headers:
        if not value.isascii() and name.decode("latin-1").lower().replace("-", "_") in SERVE_DECODES:
            try:
                value.decode()
            except UnicodeDecodeError:
                return name
    return None


def request_id(headers: list[tuple[bytes, bytes]]) -> bytes:
    """The request's X-Request-ID, or a new one, as Serve's own middleware answers with."""
    for name, value in headers:
        if name == REQUEST_ID:  # ASGI servers give header names in lower case
            return value
    return os.urandom(16).hex().encode()


class PredictAhead:
    """Answers POST /v1/predict ahead of Serve's per-request wrapper, in a router's process.

    Serve's wrapper (request metadata and context, its metrics and access log, the ongoing
    count, then the app's own ASGI layers) cost the router 0.19 of its 0.43 CPU ms per answer;
    without it the ensemble made 1.5 times the requests per second (BENCHMARKS.md, "What
    changed"). What the wrapper gave is kept otherwise: the router queues predicts beyond
    `max_ongoing_requests` itself, reports them in flight to the autoscaler, and counts them by
    status, and each answer carries an X-Request-ID as Serve's does; a stopping replica still
    finishes them, as Serve shuts its HTTP server down gracefully before the replica stops.
    Predicts get no access-log line.

    In a process with no router (Serve's proxy, a member that serves HTTP) predicts go on to
    Serve, marked as not watched for a client disconnect: Serve otherwise runs each request as
    a task beside a second one that waits for the disconnect, about a tenth of the router's CPU
    per answer. A predict call is bounded by the router's deadline and member timeout anyway.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            if (scope["path"] == _predict_path and _answer_here is not None
                    and _answer_here[2] is asyncio.get_running_loop()):
                answer, max_body_bytes, _ = _answer_here
                await answer_asgi(answer, max_body_bytes, scope, receive, send,
                                  ((REQUEST_ID, request_id(scope["headers"])),))
                return
            if scope["path"].endswith(PREDICT_PATH):  # any application's, under any route prefix
                # Serve reads the headers into a dict, so the last value of a repeated name wins.
                scope["headers"] = [*scope["headers"], DISCONNECT_DISABLED]
        # Serve answers 500 where a header it decodes is not UTF-8: the client's error, so a 400.
        if scope["type"] == "http" and (name := not_utf8(scope["headers"])) is not None:
            detail = f"header {name.decode('latin-1')}: its value is not UTF-8"
            await send_json(send, 400, json.dumps({"detail": detail}).encode(),
                            ((REQUEST_ID, request_id(scope["headers"])),))
            return
        await self.app(scope, receive, send)


def middlewares() -> list[Middleware]:
    return [Middleware(PredictAhead)]
