"""Declarative deploys with member applications: adding a version leaves the other members
running, and router replicas that a deploy stops ship their predictions first."""
from __future__ import annotations

import httpx
import numpy as np
import pytest
import ray
from ray import serve
from ray.serve.context import _get_global_client
from ray.serve.schema import ServeDeploySchema

from ensemble.config import ENSEMBLE_IMPORT_PATH, MEMBER_IMPORT_PATH, member_route
from tests.serve.conftest import wait_until

TINY = {"num_cpus": 0.05}  # the session's other apps hold most of Ray's 2 logical CPUs


def config(model_root: str, state_url: str, versions: dict[str, list[str]], name: str = "inplace",
           member_url: str | None = None, router: dict | None = None) -> dict:
    """What a Serve YAML with member applications holds, as `serve deploy` sends it.

    With `member_url`, the router calls the members over HTTP at their route prefixes; `router`
    adds to the router's settings.
    """
    router = {**TINY, **({"member_url": member_url, "member_transport": "http"} if member_url else {}), **(router or {})}
    ensemble = {
        "name": name, "route_prefix": f"/{name}", "import_path": ENSEMBLE_IMPORT_PATH,
        "args": {"model_root": model_root, "member_apps": True, "state": {"url": state_url},
                 "router": router, "members": {m: {"versions": {v: {} for v in vs}, "traffic": {vs[0]: 1.0}}
                                               for m, vs in versions.items()}},
    }
    members = [
        {"name": f"{m}-{v}", "route_prefix": member_route(m, v) if member_url else None,
         "import_path": MEMBER_IMPORT_PATH, "args": {"model_root": model_root, "model": m, "version": v, **TINY}}
        for m, vs in versions.items() for v in vs
    ]
    return {"applications": [ensemble, *members]}


def deploy(cfg: dict) -> None:
    _get_global_client().deploy_apps(ServeDeploySchema.model_validate(cfg))


def pids(client: httpx.Client, name: str = "inplace") -> dict[str, int]:
    members = client.get(f"/{name}/v1/members").json()
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


def test_members_called_over_http_answer_and_keep_running_across_a_deploy(client: httpx.Client, serve_session):
    root, state = str(serve_session.model_root), serve_session.state_url.replace("ensemble.db", "viahttp.db")
    deploy(config(root, state, {"xgboost": ["v1"]}, "viahttp", serve_session.url))
    try:
        wait_until(lambda: client.get("/viahttp/readyz").status_code == 200, 120, "member over HTTP ready")
        before = pids(client, "viahttp")  # info() over HTTP GET
        window = [[100.0 + i * 0.01] * 8 for i in range(128)]
        answer = client.post("/viahttp/v1/predict", json={"window": window}).json()
        assert answer["members"]["xgboost"]["version"] == "v1" and not answer["degraded"]
        # The member's own route: raw float32 windows in, a JSON 400 for a body that is not whole windows.
        direct = client.post("/members/xgboost-v1", content=np.asarray([window], dtype=np.float32).tobytes())
        assert direct.status_code == 200
        assert np.frombuffer(direct.content, dtype=np.float32)[0] == pytest.approx(answer["prediction"], rel=1e-5)
        refused = client.post("/members/xgboost-v1", content=b"\x00" * 10)
        assert refused.status_code == 400 and "whole number" in refused.json()["detail"]
        deploy(config(root, state, {"xgboost": ["v1", "v2"]}, "viahttp", serve_session.url))
        wait_until(lambda: "xgboost-v2" in pids(client, "viahttp"), 120, "xgboost v2 deployed")
        assert pids(client, "viahttp")["xgboost-v1"] == before["xgboost-v1"]
    finally:
        for app in ("viahttp", "xgboost-v1", "xgboost-v2"):
            serve.delete(app)


def router_replicas(app: str) -> set[str]:
    """Names of the router replicas' actors alive now."""
    return {actor["name"] for actor in ray.util.list_named_actors(all_namespaces=True)
            if actor["name"].startswith(f"SERVE_REPLICA::{app}#EnsembleRouter#")}


def test_router_replicas_that_stop_ship_their_predictions_first(client: httpx.Client, serve_session):
    root, state = str(serve_session.model_root), serve_session.state_url.replace("ensemble.db", "replaced.db")
    # No shipment on the clock while the test runs: the predictions below stay in the router
    # replicas that made them until those stop.
    router = {"num_replicas": 2, "log_flush_s": 60}
    deploy(config(root, state, {"xgboost": ["v1"]}, "replaced", router=router))
    try:
        wait_until(lambda: client.get("/replaced/readyz").status_code == 200, 120, "two routers ready")
        old = router_replicas("replaced")
        assert len(old) == 2
        ids = [f"rp-{i}" for i in range(40)]
        for rid in ids:
            answer = client.post("/replaced/v1/predict", json={"window": [[100.0] * 8] * 128, "request_id": rid})
            assert answer.status_code == 200
        # A new CPU request replaces both router replicas, and with the application's arguments
        # changed, Serve restarts the control plane beside them.
        deploy(config(root, state, {"xgboost": ["v1"]}, "replaced", router={**router, "num_cpus": 0.06}))
        wait_until(lambda: not old & router_replicas("replaced") and len(router_replicas("replaced")) == 2, 120,
                   "both router replicas replaced")
        # Had the stopped replicas not shipped their predictions, these labels would wait (pending)
        # for rows that never come.
        report = client.post("/replaced/v1/feedback", json={"items": [{"request_id": r, "actual": 1.0} for r in ids]})
        assert report.json()["applied"] == len(ids), report.json()
    finally:
        for app in ("replaced", "xgboost-v1"):
            serve.delete(app)
