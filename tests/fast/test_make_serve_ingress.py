"""The ensemble under `make serve`'s settings (HAProxy, Serve's HTTP-server callback) over real HTTP:
predicts are answered ahead of Serve's per-request wrapper, counted and timed by the router.

Starts its own Ray in a subprocess (`bench.servers`), before the serve session's, so it is a `serve` test.
"""
import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from bench.apps.graph_args import DEFAULT_GRAPH
from bench.servers import Server, predict_probe, ray_server
from bench.wrk import make_bodies

pytestmark = pytest.mark.serve


def post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], dict]:
    request = urllib.request.Request(url, data=body, headers={"content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.loads(error.read())


def prometheus_samples(url: str, name: str) -> dict[str, float]:
    """The samples of metric `name` on a Prometheus endpoint, by their label set."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return {line[len(name):].rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line.startswith((name + "{", name + " "))}


def answers_are_exported(metrics_url: str) -> bool:
    """The test's three answers counted by status and timed, on Ray's Prometheus endpoint."""
    answers = prometheus_samples(metrics_url, "ray_ensemble_predict_answers_total")
    timed = prometheus_samples(metrics_url, "ray_ensemble_predict_latency_s_count")
    statuses = ("200", "422", "413")
    counted = all(any(f'status="{status}"' in labels for labels in answers) for status in statuses)
    return counted and sum(timed.values()) >= len(statuses)


def router_access_log(temp_dir: str) -> str:
    logs = Path(temp_dir, "session_latest", "logs", "serve").glob("replica_*EnsembleRouter*.log")
    return "".join(path.read_text(errors="replace") for path in logs)


def access_log_after_readyz(server: Server, times: int) -> str:
    """The router's access log once it shows GET /readyz `times` times (one more request now)."""
    urllib.request.urlopen(f"{server.url}/readyz", timeout=10).read()
    deadline = time.monotonic() + 10  # the line is written just after the answer is sent
    while (log := router_access_log(server.marker)).count("GET /readyz") < times:
        assert time.monotonic() < deadline, "Serve's access log never showed /readyz"
        time.sleep(0.05)
    return log


def leave_mid_body(port: int, path: str) -> None:
    """Send a request's headers, wait for the server to start reading its body (its 100 Continue,
    so the request has reached the router), then send part of the body and close the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                           "Content-Length: 1000\r\nExpect: 100-continue\r\n\r\n".encode())
        # HAProxy drops a request whose client closes before it is forwarded (`abortonclose`).
        interim = connection.recv(1024)
        assert interim.startswith(b"HTTP/1.1 100 "), f"no 100 Continue for {path}: {interim!r}"
        connection.sendall(b'{"request_id": "left-early"')


@contextmanager
def serving_ensemble(tmp_path: Path, tiny_repo: Path, settings: str, env: dict[str, str | None]) -> Iterator[Server]:
    """`make serve`'s graph over the session's tiny models (a fresh checkout has no model_repo/),
    under ingress `settings` with `env` set (None: unset), ready; stopped afterwards."""
    graph = tmp_path / "ensemble.yaml"
    graph.write_text(DEFAULT_GRAPH.read_text().replace("model_root: model_repo", f"model_root: {tiny_repo}"))
    server = ray_server("ensemble", "ensemble", tmp_path, settings, ["--graph", str(graph)])
    for name, value in env.items():
        if value is None:
            server.env.pop(name)
        else:
            server.env[name] = value
    server.start()
    try:
        server.wait_ready(predict_probe(make_bodies()[0]), 300)
        yield server
    finally:
        server.stop()


def test_predicts_are_answered_ahead_of_serves_wrapper(tmp_path: Path, tiny_repo: Path) -> None:
    body = make_bodies()[0]
    env = {"RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1",  # each access-log line written at once
           "RAY_metrics_report_interval_ms": "1000"}  # metrics exported each second, not each ten
    with serving_ensemble(tmp_path, tiny_repo, "throughput+haproxy", env) as server:
        status, headers, answer = post(f"{server.url}/v1/predict", body, {"x-request-id": "trace-7"})
        assert status == 200 and len(answer["members"]) == 5 and not answer["degraded"]
        assert headers["x-request-id"] == "trace-7"
        status, _, error = post(f"{server.url}/v1/predict", b'{"window": "abc"}')
        assert status == 422 and error["detail"].startswith("window:")
        status, _, error = post(f"{server.url}/v1/predict", b"[" + b"1," * 5_000_000 + b"1]")
        assert status == 413 and error["detail"] == "body: over the limit of 8388608 bytes"
        # Serve's wrapper logs each request it sees: another route's is there, and predicts only
        # until the first one Serve routed told the router its path (the readiness probe's).
        routed = access_log_after_readyz(server, 1).count("POST /v1/predict")
        assert routed >= 1
        for _ in range(10):
            assert post(f"{server.url}/v1/predict", body)[0] == 200
        assert access_log_after_readyz(server, 2).count("POST /v1/predict") == routed
        # A client that leaves mid-body is counted as gone (499), not as a server error.
        leave_mid_body(server.port, "/v1/feedback")
        deadline = time.monotonic() + 10
        while "POST /v1/feedback" not in (log := router_access_log(server.marker)):
            assert time.monotonic() < deadline, "Serve's access log never showed the feedback that was left"
            time.sleep(0.05)
        assert "POST /v1/feedback 499" in log and "ClientDisconnect" not in log
        # Instead the router counts and times them itself, on Ray's Prometheus endpoint.
        metrics_url = f"http://127.0.0.1:{server.info['metrics_port']}/metrics"
        deadline = time.monotonic() + 60
        while not answers_are_exported(metrics_url):
            assert time.monotonic() < deadline, "the predict answers never reached Ray's metrics"
            time.sleep(0.5)


def test_under_rays_defaults_serves_path_answers_predicts(tmp_path: Path, tiny_repo: Path) -> None:
    """`make serve SERVE_ENV=`: Ray's proxy and Serve's per-request wrapper, no callback (the
    serve session runs under `make serve`'s settings)."""
    with serving_ensemble(tmp_path, tiny_repo, "default", {"RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": None}) as server:
        status, headers, answer = post(f"{server.url}/v1/predict", make_bodies()[0], {"x-request-id": "trace-8"})
        assert status == 200 and len(answer["members"]) == 5 and not answer["degraded"]
        assert headers["x-request-id"] == "trace-8"
        status, _, error = post(f"{server.url}/v1/predict", b'{"window": [[1, 2]]}')
        assert status == 422 and error["detail"].startswith("window")
