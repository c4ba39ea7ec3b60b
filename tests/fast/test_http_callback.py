"""Serve's HTTP-server callback: a router's process answers predicts ahead of Serve's wrapper;
elsewhere predicts are marked as not watched for a disconnect."""
import asyncio

import pytest
from ray.serve._private.http_util import parse_disconnect_disabled_header, validate_http_proxy_callback_return
from ray.serve._private.utils import call_function_from_import_path

from deployments import http_callback
from deployments.http_callback import PredictAhead
from tests.fast.test_graph_configs import _make_serve_env


async def _answer(body: bytes, arrived: float) -> tuple[int, bytes]:
    return 200, b'{"echo":' + body + b"}"


def _request(method: str, path: str, headers: list[tuple[bytes, bytes]],
             body: bytes = b"") -> tuple[list[dict], list[dict]]:
    """What reached Serve's app (the headers as its direct ingress reads them), and what was sent back."""
    seen, sent = [], []
    chunks = [{"type": "http.request", "body": body[:3], "more_body": True},
              {"type": "http.request", "body": body[3:], "more_body": False}]

    async def app(scope, receive, send) -> None:
        seen.append(dict(scope["headers"]))

    async def receive() -> dict:
        return chunks.pop(0)

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": headers}
    asyncio.run(PredictAhead(app)(scope, receive, send))
    return seen, sent


@pytest.fixture
def no_router(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_callback, "_answer_here", None)


@pytest.fixture
def router(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_callback, "_answer_here", None)
    http_callback.answer_predict_here(_answer)


@pytest.mark.parametrize("path", ["/v1/predict", "/ensemble/v1/predict"])
def test_without_a_router_predict_goes_to_serve_not_watched_for_disconnects(no_router, path):
    (headers,), _ = _request("POST", path, [(b"content-type", b"application/json")])
    assert parse_disconnect_disabled_header(headers)
    assert headers[b"content-type"] == b"application/json"


def test_a_client_cannot_turn_the_mark_off(no_router):
    (headers,), _ = _request("POST", "/v1/predict", [(b"x-request-disconnect-disabled", b"?0")])
    assert parse_disconnect_disabled_header(headers)


@pytest.mark.parametrize("method, path", [("POST", "/v1/feedback"), ("GET", "/v1/predict"), ("GET", "/readyz")])
def test_other_requests_keep_the_watch_and_reach_serve(router, method, path):
    (headers,), sent = _request(method, path, [])
    assert not parse_disconnect_disabled_header(headers) and not sent


@pytest.mark.parametrize("path", ["/v1/predict", "/ensemble/v1/predict"])
def test_in_a_routers_process_predict_is_answered_without_serve(router, path):
    seen, (start, body) = _request("POST", path, [(b"x-request-id", b"trace-7")], b'[1, 2, 3]')
    assert not seen
    assert start["status"] == 200 and body["body"] == b'{"echo":[1, 2, 3]}'
    assert dict(start["headers"]) == {b"content-type": b"application/json", b"content-length": b"18",
                                      b"x-request-id": b"trace-7"}


def test_an_answer_ahead_of_serve_gets_a_request_id_as_serves_would(router):
    _, (start, _) = _request("POST", "/v1/predict", [], b"{}")
    assert len(dict(start["headers"])[b"x-request-id"]) == 32


def test_make_serve_names_a_callback_serve_accepts():
    env = dict(item.split("=", 1) for item in _make_serve_env())
    middlewares = validate_http_proxy_callback_return(
        call_function_from_import_path(env["RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"]))
    assert [m.cls for m in middlewares] == [PredictAhead]
