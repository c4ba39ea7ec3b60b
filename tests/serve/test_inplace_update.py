"""Declarative deploys with member applications: adding a version leaves the other members running."""
from __future__ import annotations

import httpx
from ray import serve
from ray.serve.context import _get_global_client
from ray.serve.schema import ServeDeploySchema

from ensemble.config import ENSEMBLE_IMPORT_PATH, MEMBER_IMPORT_PATH
from tests.serve.conftest import wait_until

TINY = {"num_cpus": 0.05}  # the session's other apps hold most of Ray's 2 logical CPUs


def config(model_root: str, state_url: str, versions: dict[str, list[str]]) -> dict:
    """What a Serve YAML with member applications holds, as `serve deploy` sends it."""
    ensemble = {
        "name": "inplace", "route_prefix": "/inplace", "import_path": ENSEMBLE_IMPORT_PATH,
        "args": {"model_root": model_root, "member_apps": True, "state": {"url": state_url},
                 "router": TINY, "members": {m: {"versions": {v: {} for v in vs}, "traffic": {vs[0]: 1.0}}
                                              for m, vs in versions.items()}},
    }
    members = [
        {"name": f"{m}-{v}", "route_prefix": None, "import_path": MEMBER_IMPORT_PATH,
         "args": {"model_root": model_root, "model": m, "version": v, **TINY}}
        for m, vs in versions.items() for v in vs
    ]
    return {"applications": [ensemble, *members]}


def deploy(cfg: dict) -> None:
    _get_global_client().deploy_apps(ServeDeploySchema.model_validate(cfg))


def pids(client: httpx.Client) -> dict[str, int]:
    members = client.get("/inplace/v1/members").json()
    return {f"{m}-{v}": info["pid"] for m, spec in members.items() for v, info in spec["versions"].items()
            if "pid" in info}


def test_adding_a_version_keeps_unchanged_members_running(client: httpx.Client, serve_session):
    root, state = str(serve_session.model_root), serve_session.state_url.replace("ensemble.db", "inplace.db")
    deploy(config(root, state, {"xgboost": ["v1"], "lightgbm": ["v1"]}))
    try:
        wait_until(lambda: client.get("/inplace/readyz").status_code == 200, 120, "member apps ready")
        before = pids(client)
        assert sorted(before) == ["lightgbm-v1", "xgboost-v1"]
        deploy(config(root, state, {"xgboost": ["v1"], "lightgbm": ["v1", "v2"]}))
        wait_until(lambda: "lightgbm-v2" in pids(client), 120, "lightgbm v2 deployed")
        after = pids(client)
        assert {name: after[name] for name in before} == before  # the same replicas, not restarted
        answer = client.post("/inplace/v1/predict", json={"window": [[100.0] * 8] * 128}).json()
        assert answer["members"]["lightgbm"]["version"] == "v1" and not answer["degraded"]
    finally:
        for app in ("inplace", "xgboost-v1", "lightgbm-v1", "lightgbm-v2"):
            serve.delete(app)
