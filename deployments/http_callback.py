"""Serve's HTTP-server callback (`RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`, set by `make serve`).

Serve calls `middlewares` in every process that starts an HTTP server (its proxy, and each
replica that serves HTTP itself behind HAProxy) and wraps that server's whole ASGI app in them.
Kept free of Ray and of the router's imports: a failing import here would stop the ingress.
"""

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

PREDICT_PATH = "/v1/predict"
DISCONNECT_DISABLED = (b"x-request-disconnect-disabled", b"?1")


class PredictDisconnectUnwatched:
    """Tells Serve not to watch POST /v1/predict for a client disconnect.

    Serve otherwise runs each request as a task beside a second task that waits for the
    disconnect, and joins them with `asyncio.wait`: about a tenth of the router's CPU per answer
    under load (BENCHMARKS.md, "What changed"). A predict call is bounded by the router's
    deadline and member timeout anyway, so a client that leaves costs at most that; Serve then
    counts it 200 where it would have counted 499. Every other route keeps the watch.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # endswith: the ensemble may be deployed under any route prefix.
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"].endswith(PREDICT_PATH):
            # Serve reads the headers into a dict, so the last value of a repeated name wins.
            scope["headers"] = [*scope["headers"], DISCONNECT_DISABLED]
        await self.app(scope, receive, send)


def middlewares() -> list[Middleware]:
    return [Middleware(PredictDisconnectUnwatched)]
