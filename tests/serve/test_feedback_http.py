"""Learned trust over HTTP: feedback moves the weights, and a restart keeps them exactly."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from ray import serve

from graphs.ensemble import build_app
from models.data import sample_windows
from tests.serve.conftest import ADMIN, DEPLOYED, graph_args, wait_until
from tests.store_lock import table_gone, write_locked

WINDOWS = sample_windows(200, seed=21)


def trust_weights(client: httpx.Client) -> dict[str, float]:
    return {name: m["weight"] for name, m in client.get("/v1/trust").json()["members"].items()}


def test_feedback_that_matches_one_member_makes_it_the_most_trusted(client: httpx.Client, serve_session):
    answers = client.post("/v1/predict", json={
        "instances": [{"window": w.tolist(), "request_id": f"fb-{i}"} for i, w in enumerate(WINDOWS[:16])]
    }).json()["predictions"]
    answers += [
        client.post("/v1/predict", json={"window": w.tolist(), "request_id": f"fb-{i}"}).json()
        for i, w in enumerate(WINDOWS[16:], start=16)
    ]
    # The truth always equals lstm's prediction: lstm must end up trusted above every other member.
    labels = [{"request_id": a["request_id"], "actual": a["members"]["lstm"]["prediction"]} for a in answers]
    report = client.post("/v1/feedback", json={"items": labels}).json()
    # A label that reaches the other router replica before this one shipped its prediction
    # waits (pending) and is applied as soon as the prediction arrives.
    assert report["received"] == 200 and report["applied"] + report["pending"] == 200, report
    wait_until(lambda: client.get("/v1/trust").json()["feedback"]["applied"] >= 200, 10, "every label applied")

    def lstm_leads() -> bool:
        weights = trust_weights(client)
        return all(weights["lstm-v1"] > w for name, w in weights.items() if name != "lstm-v1")

    wait_until(lstm_leads, 5, "lstm to lead the weights")
    # The routers serve with the learned weights, not the priors.
    answer = client.post("/v1/predict", json={"window": WINDOWS[0].tolist()}).json()
    assert answer["members"]["lstm"]["weight"] == max(m["weight"] for m in answer["members"].values())

    again = client.post("/v1/feedback", json={"items": labels[:5] + [{"request_id": "nobody", "actual": 0.1}]}).json()
    assert again["duplicate"] == 5 and again["applied"] == 0 and again["pending"] + again["unknown"] == 1

    trust = client.get("/v1/trust").json()
    assert trust["policy"] == "hedge" and trust["members"]["lstm-v1"]["labels"] >= 200
    assert set(trust["members"]["xgboost-v1"]["drift"]) >= {"ratio", "rolling_mse", "baseline_mse", "drift"}

    # Restart the whole application: the weights come back exactly.
    before = trust_weights(client)
    serve.delete("ensemble")
    serve.run(build_app(graph_args(serve_session.model_root, serve_session.state_url)), name="ensemble", route_prefix="/")
    wait_until(lambda: client.get("/readyz").status_code == 200, 120, "ensemble ready after restart")
    after = trust_weights(client)
    assert sorted(after) == sorted(before)
    for name in before:
        assert after[name] == pytest.approx(before[name], abs=1e-6)
    assert client.get("/v1/trust").json()["members"]["lstm-v1"]["labels"] >= 200


@pytest.mark.parametrize(
    "payload, status",
    [
        ({"items": [{"request_id": "fb-1", "actual": 0.1}, {"request_id": "fb-2", "actual": "x"}]}, 422),
        ({"request_id": "fb-1"}, 422),
        ({"items": [{"request_id": f"r{i}", "actual": 0.0} for i in range(10_001)]}, 413),
    ],
)
def test_bad_feedback_is_4xx_and_applies_nothing(client: httpx.Client, payload, status):
    before = client.get("/v1/trust").json()["feedback"]
    response = client.post("/v1/feedback", json=payload)
    assert response.status_code == status and response.json()["detail"]
    assert client.get("/v1/trust").json()["feedback"] == before


def test_members_are_all_reported(client: httpx.Client):
    assert sorted(client.get("/v1/trust").json()["members"]) == DEPLOYED


def test_reused_request_ids_never_block_the_prediction_log(client: httpx.Client):
    """Clients resend request ids; predictions after a burst of repeats are still logged and joined."""
    body = {"window": WINDOWS[0].tolist(), "request_id": "reused"}
    with ThreadPoolExecutor(8) as pool:  # concurrent, so one replica ships the same id twice at once
        assert {r.status_code for r in pool.map(lambda _: client.post("/v1/predict", json=body), range(24))} == {200}
    answer = client.post("/v1/predict", json={"window": WINDOWS[1].tolist(), "request_id": "after-reuse"}).json()
    before = client.get("/v1/trust").json()["feedback"]["applied"]
    labels = [{"request_id": "reused", "actual": 0.0}, {"request_id": "after-reuse", "actual": answer["prediction"]}]
    client.post("/v1/feedback", json={"items": labels})
    wait_until(lambda: client.get("/v1/trust").json()["feedback"]["applied"] == before + 2, 10, "both labels applied")


def test_a_store_that_fails_answers_503_and_the_same_feedback_later_applies_once(client: httpx.Client,
                                                                                 serve_session):
    """Another process holds the state store's write lock: feedback and admin changes are refused
    with a 503, nothing of them is learned or served, and the same calls succeed once it lets go."""
    ids = [f"locked{i}" for i in range(8)]
    answers = client.post("/synthetic/v1/predict", json={
        "instances": [{"window": w.tolist(), "request_id": rid} for w, rid in zip(WINDOWS, ids)]}).json()
    labels = {"items": [{"request_id": a["request_id"], "actual": a["prediction"] + 0.1}
                        for a in answers["predictions"]]}

    def learned() -> int:
        return sum(m["labels"] for m in client.get("/synthetic/v1/trust").json()["members"].values())

    before, traffic = learned(), client.get("/synthetic/v1/admin/traffic", headers=ADMIN).json()
    with write_locked(Path(serve_session.synthetic_state_url.removeprefix("sqlite:///"))):
        refused = client.post("/synthetic/v1/feedback", json=labels, timeout=60)
        assert refused.status_code == 503 and "send it again" in refused.json()["detail"], refused.text
        change = client.put("/synthetic/v1/admin/traffic/sig", json={"split": {"v1": 0.5, "v2": 0.5}},
                            headers=ADMIN, timeout=60)
        assert change.status_code == 503, change.text
    assert learned() == before
    assert client.get("/synthetic/v1/admin/traffic", headers=ADMIN).json() == traffic
    assert client.post("/synthetic/v1/feedback", json=labels).json()["applied"] == len(ids)
    assert learned() == before + len(ids)
    assert client.post("/synthetic/v1/feedback", json=labels).json()["duplicate"] == len(ids)


def test_a_store_that_cannot_be_read_answers_503_for_the_rollouts(client: httpx.Client, serve_session):
    """The rollouts' history is read from the store: while it cannot be, a 503 (not a 500)."""
    path = Path(serve_session.synthetic_state_url.removeprefix("sqlite:///"))
    with table_gone(path, "events"):
        refused = client.get("/synthetic/v1/rollouts")
        assert refused.status_code == 503 and "try again" in refused.json()["detail"], refused.text
    assert client.get("/synthetic/v1/rollouts").status_code == 200
