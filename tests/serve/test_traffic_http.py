"""Traffic between versions over real HTTP: admin API, live split changes, shadows, canary rollouts."""
from __future__ import annotations

import itertools
import threading
import time

import httpx
import numpy as np
import pytest
from ray import serve

from models.data import sample_windows
from tests.serve.conftest import ADMIN, synthetic_app, wait_until
from tests.serve.faulty import signal

WINDOWS = sample_windows(64, seed=5)
IDS = itertools.count()
PLAN = {"steps": [20, 50, 100], "interval_s": 0.5, "min_requests": 40, "min_labels": 40,
        "error_tolerance": 1.0, "max_error_rate": 0.01, "max_p99_latency_s": 2.0}


def test_admin_needs_a_token(client: httpx.Client):
    change = {"split": {"v1": 1.0}}
    assert client.put("/v1/admin/traffic/patchtst", json=change).status_code == 401
    wrong = client.put("/v1/admin/traffic/patchtst", json=change, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert client.post("/v1/admin/rollouts/patchtst/pause").status_code == 401
    disabled = client.get("/faulty/v1/admin/traffic", headers=ADMIN)
    assert disabled.status_code == 403 and "admin API disabled" in disabled.json()["detail"]
    assert client.get("/v1/admin/traffic", headers=ADMIN).json()["patchtst"]["split"] == {"v1": 1.0}


@pytest.mark.parametrize(
    "path, body, status, message",
    [
        ("/v1/admin/traffic/patchtst", {"split": {"v1": -0.5, "v2": 1.5}}, 422, ">= 0"),
        ("/v1/admin/traffic/patchtst", {"split": {"v1": 0.5, "v2": 0.6}}, 422, "sum to 1"),
        ("/v1/admin/traffic/patchtst", {"split": {"v1": 0.5, "v9": 0.5}}, 422, "not deployed"),
        ("/v1/admin/traffic/nobody", {"split": {"v1": 1.0}}, 422, "unknown member"),
        ("/v1/admin/traffic/patchtst", {"shadow": {"v2": 2.0}}, 422, "[0, 1]"),
        ("/v1/admin/traffic/patchtst", {"split": {"v1": "all"}}, 422, "split.v1"),
        ("/v1/admin/traffic/patchtst", {"split": {"v1": True, "v2": 0}}, 422, "split.v1"),
        ("/v1/admin/traffic/patchtst", {"split": {}}, 422, "split: shares must sum to 1"),
        ("/v1/admin/traffic/patchtst", {"splits": {"v1": 1.0}}, 422, "splits"),
        ("/v1/admin/rollouts/patchtst", {"canary": "v9"}, 422, "not a deployed version"),
        ("/v1/admin/rollouts/patchtst", {"canary": "v2", "steps": [50, 10, 100]}, 422, "increasing"),
        ("/v1/admin/rollouts/patchtst/rollback", None, 409, "no rollout"),
        ("/v1/admin/rollouts/patchtst/explode", None, 422, "action: Input should be 'pause'"),
        ("/v1/admin/rollouts/patchtst", {"canary": "v2", "steps": [100]}, 422, "one below 100 first"),
    ],
)
def test_invalid_changes_are_refused_and_change_nothing(client: httpx.Client, path, body, status, message):
    before = client.get("/v1/admin/traffic", headers=ADMIN).json()
    response = client.post(path, json=body, headers=ADMIN) if "rollouts" in path else client.put(
        path, json=body, headers=ADMIN)
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]
    assert client.get("/v1/admin/traffic", headers=ADMIN).json() == before


def test_a_split_change_reaches_every_router_within_a_second_under_load(client: httpx.Client):
    seen: list[tuple[float, int, str | None]] = []  # (sent at, status, patchtst version)
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=str(client.base_url), timeout=30) as own:
            for i in range(3000):  # bounded, and stops when told
                if stop.is_set():
                    return
                sent = time.monotonic()
                response = own.post("/v1/predict", json={"window": WINDOWS[i % 64].tolist(), "key": f"user-{i}"})
                version = response.json()["members"]["patchtst"]["version"] if response.status_code == 200 else None
                seen.append((sent, response.status_code, version))

    workers = [threading.Thread(target=load) for _ in range(3)]
    for worker in workers:
        worker.start()
    try:
        # Some answers sent well before the change, however fast the server answers them.
        wait_until(lambda: len(seen) >= 20 and seen[0][0] < time.monotonic() - 1.0, 30, "load to start")
        issued_at = time.monotonic()
        changed = client.put("/v1/admin/traffic/patchtst", json={"split": {"v1": 0.0, "v2": 1.0}}, headers=ADMIN)
        changed_at = time.monotonic()
        assert changed.status_code == 200 and changed.json()["patchtst"]["split"] == {"v1": 0.0, "v2": 1.0}
        wait_until(lambda: any(sent > changed_at + 1.5 for sent, _, _ in seen), 30, "load after the change")
    finally:
        stop.set()
        for worker in workers:
            worker.join(30)
        client.put("/v1/admin/traffic/patchtst", json={"split": {"v1": 1.0, "v2": 0.0}}, headers=ADMIN)
    assert [status for _, status, _ in seen] == [200] * len(seen)
    late = [version for sent, _, version in seen if sent > changed_at + 1.0]
    assert late and set(late) == {"v2"}
    # Requests sent well before the change was asked for were routed under the old split.
    assert {version for sent, _, version in seen if sent < issued_at - 0.5} == {"v1"}


def drive(client: httpx.Client, prefix: str, until: set[str], timeout_s: float = 90) -> dict:
    """Predict and send the truth back until the synthetic member's rollout reaches a status in `until`.

    Every answer must be a full 200: no client request fails while traffic moves.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ids = [f"t{next(IDS)}" for _ in range(40)]
        windows = WINDOWS[np.arange(40) % len(WINDOWS)]
        response = client.post(f"{prefix}/v1/predict", json={
            "instances": [{"window": w.tolist(), "request_id": rid} for w, rid in zip(windows, ids)]})
        assert response.status_code == 200, response.text
        assert not any(a["degraded"] for a in response.json()["predictions"])
        truth = signal(windows) + np.random.default_rng(len(ids)).normal(0, 0.01, len(ids))
        labels = [{"request_id": rid, "actual": float(y)} for rid, y in zip(ids, truth)]
        assert client.post(f"{prefix}/v1/feedback", json={"items": labels}).json()["applied"] == len(ids)
        rollout = client.get(f"{prefix}/v1/rollouts").json()["sig"]["rollout"]
        if rollout["status"] in until:
            return rollout
    raise AssertionError(f"rollout did not reach {until} in {timeout_s}s")


def test_shadow_is_scored_and_never_answers(client: httpx.Client):
    change = client.put("/synthetic/v1/admin/traffic/sig", json={"shadow": {"v3": 1.0}}, headers=ADMIN)
    assert change.json()["sig"]["shadow"] == {"v3": 1.0}

    def shadow_scored() -> bool:
        ids = [f"s{next(IDS)}" for _ in range(8)]
        answers = client.post("/synthetic/v1/predict", json={
            "instances": [{"window": WINDOWS[i].tolist(), "request_id": rid} for i, rid in enumerate(ids)]
        }).json()["predictions"]
        assert {a["members"]["sig"]["version"] for a in answers} == {"v1"}
        client.post("/synthetic/v1/feedback", json={"items": [
            {"request_id": a["request_id"], "actual": a["prediction"]} for a in answers]})
        return client.get("/synthetic/v1/trust").json()["members"]["sig-v3"]["labels"] > 0

    try:
        wait_until(shadow_scored, 30, "the shadow's outputs to be scored by feedback")
    finally:
        client.put("/synthetic/v1/admin/traffic/sig", json={"shadow": {}}, headers=ADMIN)


def test_canary_promoted_then_bad_canary_rolled_back_and_state_survives_restart(
        client: httpx.Client, serve_session):
    started = client.post("/synthetic/v1/admin/rollouts/sig", json={"canary": "v2", **PLAN}, headers=ADMIN)
    assert started.status_code == 200 and started.json()["sig"]["split"] == {"v1": 0.8, "v2": 0.2, "v3": 0.0}
    pause = client.post("/synthetic/v1/admin/rollouts/sig/pause", headers=ADMIN)
    assert pause.status_code == 200
    assert client.get("/synthetic/v1/rollouts").json()["sig"]["rollout"]["status"] == "paused"
    assert client.post("/synthetic/v1/admin/rollouts/sig/resume", headers=ADMIN).status_code == 200

    good = drive(client, "/synthetic", {"promoted", "rolled_back"})
    assert good["status"] == "promoted", good
    history = client.get("/synthetic/v1/rollouts").json()["sig"]["history"]
    kinds = [e["kind"] for e in history]
    assert kinds[-3:] == ["rollout.advanced", "rollout.advanced", "rollout.promoted"], kinds
    answer = client.post("/synthetic/v1/predict", json={"window": WINDOWS[0].tolist()}).json()
    assert answer["members"]["sig"]["version"] == "v2"

    before = client.get("/synthetic/v1/rollouts").json()
    serve.delete("synthetic")
    serve.run(synthetic_app(serve_session.synthetic_state_url), name="synthetic", route_prefix="/synthetic")
    wait_until(lambda: client.get("/synthetic/readyz").status_code == 200, 60, "synthetic app back")
    assert client.get("/synthetic/v1/rollouts").json() == before

    bad = client.post("/synthetic/v1/admin/rollouts/sig", json={"canary": "v3", **PLAN}, headers=ADMIN)
    assert bad.json()["sig"]["split"] == {"v1": 0.0, "v2": 0.8, "v3": 0.2}
    rolled_back = drive(client, "/synthetic", {"promoted", "rolled_back"})
    assert rolled_back["status"] == "rolled_back" and rolled_back["step"] == 0, rolled_back
    assert "canary MSE" in rolled_back["reason"]
    assert client.get("/v1/admin/traffic", headers=ADMIN).status_code == 200
    assert client.get("/synthetic/v1/admin/traffic", headers=ADMIN).json()["sig"]["split"] == {
        "v1": 0.0, "v2": 1.0, "v3": 0.0}


def test_a_router_starting_beside_a_late_control_plane_first_serves_the_traffic_in_force(
        client: httpx.Client, tmp_path):
    state_url = f"sqlite:///{tmp_path / 'late.db'}"
    serve.run(synthetic_app(state_url), name="late", route_prefix="/late")
    try:
        moved = client.put("/late/v1/admin/traffic/sig", json={"split": {"v2": 1.0}}, headers=ADMIN)
        assert moved.status_code == 200, moved.text
        serve.delete("late")
        # Restarted, the control plane takes 5 s to start, its router none: the router's first
        # answer must already go by the stored split, not the config's (all to v1).
        serve.run_many([serve.RunTarget(synthetic_app(state_url, control_start_s=5.0), name="late",
                                        route_prefix="/late")], wait_for_applications_running=False)
        answers: list[httpx.Response] = []
        wait_until(lambda: answers.append(client.post("/late/v1/predict", json={"window": WINDOWS[0].tolist()}))
                   or answers[-1].status_code == 200, 90, "the restarted router answering")
        assert answers[-1].json()["members"]["sig"]["version"] == "v2"
    finally:
        serve.delete("late")
