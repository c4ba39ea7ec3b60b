"""One real local Ray Serve per session, serving on a real loopback HTTP port."""
from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import ray
from ray import serve

from deployments.control import ControlPlane
from deployments.model import ModelDeployment
from deployments.router import EnsembleRouter
from ensemble.config import GraphArgs
from graphs.ensemble import build_app
from tests.serve.faulty import FaultyMember

MEMBERS = ("xgboost", "lightgbm", "patchtst", "lstm", "nhits")
SMALL = {"num_cpus": 0.1}


@dataclass
class ServeSession:
    url: str
    model_root: Path
    state_url: str


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition, timeout_s: float, what: str) -> None:
    """Poll `condition` until true; fail after `timeout_s` (no fixed sleeps)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def graph_args(model_root: Path, state_url: str, **router: object) -> GraphArgs:
    return GraphArgs.model_validate(
        {
            "model_root": str(model_root),
            "state": {"url": state_url},
            "router": {**SMALL, "deadline_s": 2.0, "max_rows": 512, "max_instances": 16, **router},
            "members": {m: {"versions": {"v1": {**SMALL, "max_batch_rows": 64}}} for m in MEMBERS},
        }
    )


def faulty_app(model_root: Path, state_url: str):
    """xgboost beside a member that raises and one that hangs, with a short deadline."""
    args = GraphArgs.model_validate(
        {
            "model_root": str(model_root),
            "state": {"url": state_url},
            "router": {**SMALL, "deadline_s": 0.5},
            "members": {m: {"versions": {"v1": SMALL}} for m in ("xgboost", "broken", "stalled")},
        }
    )
    members = {
        "xgboost": {"v1": ModelDeployment.options(name="xgboost-v1", ray_actor_options=SMALL).bind(
            str(model_root), "xgboost", "v1", 1, "cpu", 64)},
        "broken": {"v1": FaultyMember.options(name="broken-v1").bind("broken-v1", "raise")},
        "stalled": {"v1": FaultyMember.options(name="stalled-v1").bind("stalled-v1", "hang")},
    }
    config = args.model_dump(mode="json")
    return EnsembleRouter.options(name="FaultyRouter", ray_actor_options=SMALL).bind(
        config, members, {"window": 128, "n_features": 8}, ControlPlane.bind(config)
    )


@pytest.fixture(scope="session")
def serve_session(tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeSession]:
    model_root = tiny_repo
    state = tmp_path_factory.mktemp("state")
    state_url = f"sqlite:///{state / 'ensemble.db'}"
    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(graph_args(model_root, state_url)), name="ensemble", route_prefix="/")
        serve.run(faulty_app(model_root, f"sqlite:///{state / 'faulty.db'}"), name="faulty", route_prefix="/faulty")
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: httpx.get(f"{url}/readyz", timeout=5).status_code == 200, 180, "ensemble ready")
        wait_until(lambda: httpx.get(f"{url}/faulty/healthz", timeout=5).status_code == 200, 60, "faulty app up")
        yield ServeSession(url, model_root, state_url)
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="session")
def client(serve_session: ServeSession) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=serve_session.url, timeout=30) as c:
        yield c
