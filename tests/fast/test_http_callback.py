"""Serve's HTTP-server callback: predict requests are marked as not watched for a disconnect."""
import asyncio

import pytest
from ray.serve._private.http_util import parse_disconnect_disabled_header, validate_http_proxy_callback_return
from ray.serve._private.utils import call_function_from_import_path

from deployments.http_callback import PredictDisconnectUnwatched
from tests.fast.test_graph_configs import _make_serve_env


def _headers_seen(method: str, path: str, headers: list[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    seen: list[dict[bytes, bytes]] = []

    async def app(scope, receive, send) -> None:
        seen.append(dict(scope["headers"]))  # as Serve's direct ingress reads them

    scope = {"type": "http", "method": method, "path": path, "headers": headers}
    asyncio.run(PredictDisconnectUnwatched(app)(scope, None, None))
    return seen[0]


@pytest.mark.parametrize("path", ["/v1/predict", "/ensemble/v1/predict"])
def test_predict_is_not_watched_for_disconnects(path):
    headers = _headers_seen("POST", path, [(b"content-type", b"application/json")])
    assert parse_disconnect_disabled_header(headers)
    assert headers[b"content-type"] == b"application/json"


def test_a_client_cannot_turn_the_mark_off():
    assert parse_disconnect_disabled_header(
        _headers_seen("POST", "/v1/predict", [(b"x-request-disconnect-disabled", b"?0")]))


@pytest.mark.parametrize("method, path", [("POST", "/v1/feedback"), ("GET", "/v1/predict"), ("GET", "/readyz")])
def test_other_requests_keep_the_watch(method, path):
    assert not parse_disconnect_disabled_header(_headers_seen(method, path, []))


def test_make_serve_names_a_callback_serve_accepts():
    env = dict(item.split("=", 1) for item in _make_serve_env())
    middlewares = validate_http_proxy_callback_return(
        call_function_from_import_path(env["RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"]))
    assert [m.cls for m in middlewares] == [PredictDisconnectUnwatched]
