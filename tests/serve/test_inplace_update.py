"""Declarative deploys with member applications: adding a version leaves the other members
running, swapping every version (`make deploy`) keeps every member answering, and router
replicas that a deploy stops ship their predictions first."""
from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import numpy as np
import pytest
from ray import serve
from ray.serve.context import _get_global_client
from ray.serve.schema import ServeDeploySchema

from ensemble.config import AUTOSCALING_POLICY, ENSEMBLE_IMPORT_PATH, MEMBER_IMPORT_PATH, member_route
from ensemble.deploy_plan import progress, statuses
from graphs.deploy import DeployFailed
from graphs.deploy import deploy as deploy_safely
from tests.serve.conftest import wait_until

TINY = {"num_cpus": 0.01}  # the session's other apps hold most of Ray's 2 logical CPUs


def config(model_root: str, state_url: str, versions: dict[str, list[str]], name: str = "inplace",
           member_url: str | None = None, router: dict | None = None, member: dict | None = None) -> dict:
    """What a Serve YAML with member applications holds, as `serve deploy` sends it.

    With `member_url`, the router calls the members over HTTP at their route prefixes; `router`
    adds to the router's settings and `member` to every member application's.
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
         "import_path": MEMBER_IMPORT_PATH, "args": {"model_root": model_root, "model": m, "version": v, **TINY, **(member or {})}}
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
        # Windows the router would have refused: no prediction for those alone, not the tree's guess.
        mixed = np.asarray([window, [[float("nan")] * 8] * 128, window], dtype=np.float32)
        answers = np.frombuffer(client.post("/members/xgboost-v1", content=mixed.tobytes()).content, dtype=np.float32)
        assert np.isnan(answers[1]) and np.isfinite(answers[[0, 2]]).all()
        deploy(config(root, state, {"xgboost": ["v1", "v2"]}, "viahttp", serve_session.url))
        wait_until(lambda: "xgboost-v2" in pids(client, "viahttp"), 120, "xgboost v2 deployed")
        assert pids(client, "viahttp")["xgboost-v1"] == before["xgboost-v1"]
    finally:
        for app in ("viahttp", "xgboost-v1", "xgboost-v2"):
            serve.delete(app)


class ControllerApi:
    """graphs.deploy's two calls through Serve's controller: the test session runs no dashboard."""

    def details(self) -> dict:
        # As the REST API sends them: statuses as plain strings, not Serve's enums.
        return json.loads(json.dumps(_get_global_client().get_serve_details()))

    def deploy(self, config: dict) -> None:
        deploy(config)


@contextmanager
def steady_traffic(url: str, path: str) -> Iterator[list[tuple[int, dict | str]]]:
    """Predicts posted one after another to `path` from a thread until the block ends (at most
    20,000); yields the answers, (status, JSON body or text), as they come."""
    answers: list[tuple[int, dict | str]] = []
    stop = threading.Event()

    def send() -> None:
        with httpx.Client(base_url=url, timeout=60) as sender:
            while not stop.is_set() and len(answers) < 20_000:
                reply = sender.post(path, json={"window": [[100.0] * 8] * 128})
                json_body = reply.headers.get("content-type", "").startswith("application/json")
                answers.append((reply.status_code, reply.json() if json_body else reply.text))

    thread = threading.Thread(target=send)
    thread.start()
    try:
        wait_until(lambda: len(answers) >= 5, 60, "answers before the deploy")
        yield answers
        after = len(answers)
        wait_until(lambda: len(answers) >= after + 5, 60, "answers after the deploy")
    finally:
        stop.set()
        thread.join(60)


def versions_answered(answers: list[tuple[int, dict | str]]) -> list[tuple[str, ...]]:
    return [tuple(sorted(m["version"] for m in body["members"].values())) for _, body in answers]


# A slow answer waits instead of leaving a member out: a member left out in these tests is one
# the router could not call.
PATIENT = {"deadline_s": 30, "member_timeout_s": 30}


def test_swapping_every_member_version_keeps_every_member_answering(serve_session):
    root, state = str(serve_session.model_root), serve_session.state_url.replace("ensemble.db", "swapped.db")
    v1 = config(root, state, {"xgboost": ["v1"], "lightgbm": ["v1"]}, "swapped", router=PATIENT)
    # The new versions autoscale: Serve builds the graphs' policy, with its target, for them.
    autoscaling = {"min_replicas": 1, "max_replicas": 2, "target_cpu_fraction": 0.9}
    v2 = config(root, state, {"xgboost": ["v2"], "lightgbm": ["v2"]}, "swapped", router=PATIENT,
                member={"autoscaling": autoscaling})
    deploy(v1)
    try:
        wait_until(lambda: httpx.get(f"{serve_session.url}/swapped/readyz").status_code == 200, 120, "v1 ready")
        with steady_traffic(serve_session.url, "/swapped/v1/predict") as answers:
            deploy_safely(ControllerApi(), v2, timeout_s=180, poll_s=0.2, say=lambda _: None)
        assert [(status, body) for status, body in answers if status != 200] == []
        assert [body for _, body in answers if body["degraded"]] == []
        versions = versions_answered(answers)
        assert versions[0] == ("v1", "v1") and versions[-1] == ("v2", "v2")
        wait_until(lambda: not {"xgboost-v1", "lightgbm-v1"} & set(serve.status().applications), 60, "v1 deleted")
        deployed = ControllerApi().details()["applications"]["xgboost-v2"]["deployments"]["xgboost-v2"]
        policy = deployed["deployment_config"]["autoscaling_config"]["policy"]
        assert policy["policy_function"] == AUTOSCALING_POLICY and policy["policy_kwargs"] == {"target_cpu_fraction": 0.9}
    finally:
        for app in ("swapped", "xgboost-v1", "lightgbm-v1", "xgboost-v2", "lightgbm-v2"):
            serve.delete(app)


def test_a_deploy_that_fails_is_undone_while_the_old_graph_keeps_answering(serve_session):
    root, state = str(serve_session.model_root), serve_session.state_url.replace("ensemble.db", "undone.db")
    v1 = config(root, state, {"xgboost": ["v1"]}, "undone", router=PATIENT)
    missing = config(root, state, {"xgboost": ["v9"]}, "undone", router=PATIENT)  # no such version trained
    deploy(v1)
    try:
        wait_until(lambda: httpx.get(f"{serve_session.url}/undone/readyz").status_code == 200, 120, "v1 ready")
        with steady_traffic(serve_session.url, "/undone/v1/predict") as answers:
            with pytest.raises(DeployFailed, match="xgboost-v9"):
                deploy_safely(ControllerApi(), missing, timeout_s=180, poll_s=0.2, say=lambda _: None)
            wait_until(lambda: progress(statuses(ControllerApi().details()), ["undone", "xgboost-v1"]) == "running"
                       and "xgboost-v9" not in serve.status().applications, 120, "the v1 graph back")
        assert [(status, body) for status, body in answers if status != 200] == []
        assert set(versions_answered(answers)) == {("v1",)}
    finally:
        for app in ("undone", "xgboost-v1", "xgboost-v9"):
            serve.delete(app)


def router_replicas(app: str) -> set[str]:
    """The router replicas Serve holds now, stopping ones included, by id."""
    deployments = ControllerApi().details()["applications"].get(app, {}).get("deployments", {})
    return {replica["replica_id"] for replica in deployments.get("EnsembleRouter", {}).get("replicas", [])}


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
        deploy(config(root, state, {"xgboost": ["v1"]}, "replaced", router={**router, "num_cpus": 0.02}))
        # One read per check: while Serve builds the new version its details list no deployments,
        # and a second read just after could see the old two again.
        wait_until(lambda: len(now := router_replicas("replaced")) == 2 and not old & now, 120,
                   "both router replicas replaced")
        # Had the stopped replicas not shipped their predictions, these labels would wait (pending)
        # for rows that never come.
        report = client.post("/replaced/v1/feedback", json={"items": [{"request_id": r, "actual": 1.0} for r in ids]})
        assert report.json()["applied"] == len(ids), report.json()
    finally:
        for app in ("replaced", "xgboost-v1"):
            serve.delete(app)
