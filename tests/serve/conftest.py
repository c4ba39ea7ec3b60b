"""One real local Ray Serve per session, serving on a real loopback HTTP port."""
from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import ray
from ray import serve

from bench.servers import free_port, ray_env, ray_temp_dir
from deployments.control import ControlPlane
from deployments.model import ModelDeployment
from deployments.router import EnsembleRouter
from ensemble.config import GraphArgs
from graphs.ensemble import build_app
from models.data import FEATURES, N_FEATURES, WINDOW
from tests.serve.faulty import FaultyMember, LateControlPlane, SyntheticMember

MEMBERS = ("xgboost", "lightgbm", "patchtst", "lstm", "nhits")
MEMBER_VERSIONS = {"patchtst": ["v1", "v2"]}  # v2 deployed beside v1, with no traffic until a test gives it some
DEPLOYED = sorted(f"{m}-{v}" for m in MEMBERS for v in MEMBER_VERSIONS.get(m, ["v1"]))
SMALL = {"num_cpus": 0.1}
ADMIN_TOKEN = "test-admin-token"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
SYNTHETIC = {"v1": 0.0, "v2": 0.0, "v3": 0.1}  # version -> bias: v2 is as good as v1, v3 is off
CONTRACT = {"window": WINDOW, "n_features": N_FEATURES, "features": list(FEATURES)}  # the routers' without manifests


@dataclass
class ServeSession:
    url: str
    model_root: Path
    state_url: str
    synthetic_state_url: str


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
            # Two router replicas: feedback and admin changes must reach and hold across both.
            "router": {**SMALL, "num_replicas": 2, "deadline_s": 2.0, "max_rows": 512, "max_instances": 16, **router},
            "members": {m: {"versions": {v: {**SMALL, "max_batch_rows": 64} for v in MEMBER_VERSIONS.get(m, ["v1"])}}
                        for m in MEMBERS},
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
    # No admin token in this router's environment: its admin API must be disabled.
    options = {**SMALL, "runtime_env": {"env_vars": {"ENSEMBLE_ADMIN_TOKEN": ""}}}
    return EnsembleRouter.options(name="FaultyRouter", ray_actor_options=options).bind(
        config, members, CONTRACT, ControlPlane.bind(config)
    )


def synthetic_app(state_url: str, control_start_s: float = 0.0):
    """One member `sig` at three versions whose predictions the tests know (see SYNTHETIC); its
    control plane takes `control_start_s` longer to start."""
    args = GraphArgs.model_validate(
        {
            "state": {"url": state_url},
            "router": {**SMALL, "deadline_s": 2.0, "max_instances": 64},
            "members": {"sig": {"versions": {v: SMALL for v in SYNTHETIC}, "traffic": {"v1": 1.0}}},
        }
    )
    members = {"sig": {v: SyntheticMember.options(name=f"sig-{v}").bind(f"sig-{v}", bias)
                       for v, bias in SYNTHETIC.items()}}
    config = args.model_dump(mode="json")
    control = LateControlPlane.bind(config, control_start_s) if control_start_s else ControlPlane.bind(config)
    return EnsembleRouter.options(name="SyntheticRouter", ray_actor_options=SMALL).bind(
        config, members, CONTRACT, control)


@pytest.fixture(scope="session")
def serve_session(tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeSession]:
    model_root = tiny_repo
    state = tmp_path_factory.mktemp("state")
    state_url = f"sqlite:///{state / 'ensemble.db'}"
    port = free_port()
    temp_dir = ray_temp_dir()
    # Replicas inherit the environment of the Ray instance this process starts: `make serve`'s
    # settings, so the tests go where users' requests go (HAProxy, predictions answered by Serve's
    # HTTP-server callback ahead of its per-request wrapper).
    session_env = {**ray_env("throughput+haproxy", temp_dir), "ENSEMBLE_ADMIN_TOKEN": ADMIN_TOKEN}
    saved_env = {name: os.environ.get(name) for name in session_env}
    os.environ.update(session_env)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=temp_dir)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(graph_args(model_root, state_url)), name="ensemble", route_prefix="/")
        serve.run(faulty_app(model_root, f"sqlite:///{state / 'faulty.db'}"), name="faulty", route_prefix="/faulty")
        serve.run(synthetic_app(f"sqlite:///{state / 'synthetic.db'}"), name="synthetic", route_prefix="/synthetic")
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: httpx.get(f"{url}/readyz", timeout=5).status_code == 200, 180, "ensemble ready")
        wait_until(lambda: httpx.get(f"{url}/faulty/healthz", timeout=5).status_code == 200, 60, "faulty app up")
        wait_until(lambda: httpx.get(f"{url}/synthetic/readyz", timeout=5).status_code == 200, 60, "synthetic app up")
        yield ServeSession(url, model_root, state_url, f"sqlite:///{state / 'synthetic.db'}")
    finally:
        serve.shutdown()
        ray.shutdown()
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="session")
def client(serve_session: ServeSession) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=serve_session.url, timeout=30) as c:
        yield c
