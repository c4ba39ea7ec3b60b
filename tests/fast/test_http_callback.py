"""Serve's HTTP-server callback: a router's process answers predicts ahead of Serve's wrapper;
elsewhere predicts are marked as not watched for a disconnect."""
import asyncio
import json

import pytest
from ray.serve._private.http_util import parse_disconnect_disabled_header, validate_http_proxy_callback_return
from ray.serve._private.utils import call_function_from_import_path

from deployments import http_callback
from deployments.http_callback import PredictAhead
from tests.fast.test_graph_configs import _make_serve_env


MAX_BODY_BYTES = 16
SERVER_LOOP = asyncio.new_event_loop()  # the loop the HTTP server, and so `PredictAhead`, runs on


async def _answer(body: bytes | None, arrived: float) -> tuple[int, bytes]:
    return (413, b'{"detail":"too large"}') if body is None else (200, b'{"echo":' + body + b"}")


def _request(method: str, path: str, headers: list[tuple[bytes, bytes]],
             body: bytes = b"", unread: list[dict] | None = None) -> tuple[list[dict], list[dict]]:
    """What reached Serve's app (the headers as its direct ingress reads them), and what was sent
    back; the body comes in chunks of 3 bytes, and `unread` receives those never read."""
    seen, sent = [], []
    chunks = [{"type": "http.request", "body": body[i : i + 3], "more_body": i + 3 < len(body)}
              for i in range(0, max(len(body), 1), 3)]

    async def app(scope, receive, send) -> None:
        seen.append(dict(scope["headers"]))

    async def receive() -> dict:
        return chunks.pop(0)

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": headers}
    SERVER_LOOP.run_until_complete(PredictAhead(app)(scope, receive, send))
    if unread is not None:
        unread.extend(chunks)
    return seen, sent


@pytest.fixture
def no_router(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_callback, "_answer_here", None)
    monkeypatch.setattr(http_callback, "_predict_path", None)


@pytest.fixture
def router(monkeypatch: pytest.MonkeyPatch) -> None:
    """A router's process, to which Serve has routed a predict at /v1/predict."""
    monkeypatch.setattr(http_callback, "_answer_here", None)
    monkeypatch.setattr(http_callback, "_predict_path", None)
    http_callback.answer_predict_here(_answer, MAX_BODY_BYTES, SERVER_LOOP)
    http_callback.predict_routed_here("/v1/predict")


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
    http_callback.predict_routed_here(path)  # its application's route prefix, whatever it is
    seen, (start, body) = _request("POST", path, [(b"x-request-id", b"trace-7")], b'[1, 2, 3]')
    assert not seen
    assert start["status"] == 200 and body["body"] == b'{"echo":[1, 2, 3]}'
    assert dict(start["headers"]) == {b"content-type": b"application/json", b"content-length": b"18",
                                      b"x-request-id": b"trace-7"}


@pytest.mark.parametrize("path", ["/other/v1/predict", "/v1/predict/"])
def test_a_predict_path_serve_has_not_routed_here_goes_to_serve(router, path):
    """Another application's predict (while HAProxy's routes catch up, or a made-up prefix):
    Serve routes it, and the router answers only its own."""
    (headers,), sent = _request("POST", path, [])
    assert not sent and parse_disconnect_disabled_header(headers) == path.endswith("/v1/predict")


def test_before_serve_routes_a_predict_here_it_goes_to_serve(router, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(http_callback, "_predict_path", None)
    (headers,), sent = _request("POST", "/v1/predict", [])
    assert not sent and parse_disconnect_disabled_header(headers)


def test_a_router_whose_code_runs_on_another_loop_gets_its_predicts_through_serve(router):
    """Serve runs user code on a loop of its own in another thread unless its throughput flag is
    set: the router's queues and futures belong to that loop, so Serve's path takes its predicts."""
    own_loop = asyncio.new_event_loop()
    try:
        http_callback.answer_predict_here(_answer, MAX_BODY_BYTES, own_loop)
        (headers,), sent = _request("POST", "/v1/predict", [], b"{}")
    finally:
        own_loop.close()
    assert not sent and parse_disconnect_disabled_header(headers)


def test_an_answer_ahead_of_serve_gets_a_request_id_as_serves_would(router):
    _, (start, _) = _request("POST", "/v1/predict", [], b"{}")
    assert len(dict(start["headers"])[b"x-request-id"]) == 32


@pytest.mark.parametrize("declared", [True, False])
def test_a_body_past_the_limit_is_413_and_left_unread(router, declared):
    body = b"[" + b"1," * 20 + b"1]"  # 43 bytes, the limit 16
    headers = [(b"content-length", str(len(body)).encode())] if declared else []
    unread: list[dict] = []
    _, (start, answer) = _request("POST", "/v1/predict", headers, body, unread)
    assert start["status"] == 413 and answer["body"] == b'{"detail":"too large"}'  # the router told of it
    # Declared: nothing read; chunked: read until past the limit (18 of 43 bytes), no further.
    assert sum(len(chunk["body"]) for chunk in unread) == (len(body) if declared else len(body) - 18)


def test_a_body_at_the_limit_is_answered(router):
    body = b"[" + b"1," * 6 + b"11]"  # 16 bytes
    _, (start, answer) = _request("POST", "/v1/predict", [(b"content-length", b"16")], body)
    assert start["status"] == 200 and answer["body"] == b'{"echo":' + body + b"}"


def test_make_serve_names_a_callback_serve_accepts():
    env = dict(item.split("=", 1) for item in _make_serve_env())
    middlewares = validate_http_proxy_callback_return(
        call_function_from_import_path(env["RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"]))
    assert [m.cls for m in middlewares] == [PredictAhead]


@pytest.mark.parametrize("path", ["/healthz", "/v1/feedback"])
def test_a_header_value_serve_cannot_decode_is_400_not_500(router, path):
    seen, (start, body) = _request("POST", path, [(b"x-request-id", b"a\xffb")])
    assert not seen and start["status"] == 400
    assert json.loads(body["body"]) == {"detail": "header x-request-id: its value is not UTF-8"}
    seen, (start, body) = _request("POST", path, [(b"x-request-id", b"trace-8"), (b"traceparent", b"a\xffb")])
    assert not seen and start["status"] == 400 and dict(start["headers"])[b"x-request-id"] == b"trace-8"
    for other in ((b"x-session-id", "café".encode()), (b"user-agent", b"caf\xe9")):  # UTF-8, or not Serve's
        (headers,), sent = _request("POST", path, [other])
        assert not sent
