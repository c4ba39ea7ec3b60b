"""The ensemble over real HTTP on a real local Ray Serve."""
from __future__ import annotations

import collections
import concurrent.futures
import json
import os
import random
import signal
from pathlib import Path

import httpx
import numpy as np
import pytest

from ray import serve

from deployments.control import ControlPlane
from deployments.router import EnsembleRouter
from ensemble.config import GraphArgs
from models.data import sample_windows
from tests.serve.faulty import FaultyMember
from tests.serve.conftest import ADMIN, CONTRACT, DEPLOYED, MEMBERS, wait_until

WINDOWS = sample_windows(8, seed=11)


def window(i: int = 0) -> list[list[float]]:
    return WINDOWS[i].tolist()


def test_health_ready_and_docs(client: httpx.Client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert sorted(ready["members"]) == DEPLOYED
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"window", "key", "request_id", "instances"} <= set(body["properties"])
    assert client.get("/docs").status_code == 200


def test_haproxy_drops_a_client_silent_for_a_minute(client: httpx.Client):
    """Ray's HAProxy waits 3600 s for a client that stopped mid-request; make serve's settings
    (which the session runs under) bound that silence to 60 s."""
    assert client.get("/healthz").status_code == 200  # served through HAProxy
    # Serve writes each node's config in a folder of its own beside the path it is given.
    config = Path(os.environ["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"])
    haproxy = next(config.parent.glob(f"*/{config.name}")).read_text().splitlines()
    assert "timeout client 60s" in {line.strip() for line in haproxy}


def test_predict_uses_all_five_members(client: httpx.Client):
    answer = client.post("/v1/predict", json={"window": window(), "request_id": "req-1"}).json()
    assert answer["request_id"] == "req-1" and answer["degraded"] is False and answer["missing"] == []
    assert sorted(answer["members"]) == sorted(MEMBERS)
    weights = [m["weight"] for m in answer["members"].values()]
    assert sum(weights) == pytest.approx(1.0) and all(w == pytest.approx(0.2) for w in weights)
    combined = sum(m["weight"] * m["prediction"] for m in answer["members"].values())
    assert answer["prediction"] == pytest.approx(combined, rel=1e-6)
    assert all(m["version"] == "v1" for m in answer["members"].values())


def test_batch_predict_answers_in_order_and_matches_single(client: httpx.Client):
    batch = client.post("/v1/predict", json={"instances": [window(i) for i in range(4)]}).json()["predictions"]
    assert len(batch) == 4
    for i, answer in enumerate(batch):
        single = client.post("/v1/predict", json={"window": window(i)}).json()
        assert answer["prediction"] == pytest.approx(single["prediction"], rel=1e-5, abs=1e-9)


def test_longer_window_uses_last_rows(client: httpx.Client):
    longer = np.concatenate([WINDOWS[1][:10], WINDOWS[0]]).tolist()
    a = client.post("/v1/predict", json={"window": longer}).json()
    b = client.post("/v1/predict", json={"window": window(0)}).json()
    assert a["prediction"] == pytest.approx(b["prediction"], rel=1e-6)


BAD = [
    ({"window": window()[:100]}, 422, "window: 100 rows"),
    ({"window": [row[:6] for row in window()]}, 422, "expected 8 features"),
    ({"window": window()[:-1] + [["a"] * 8]}, 422, "window[127][0]"),
    ({"window": "nope"}, 422, "window"),
    ({"instances": [window(), window()[:3]]}, 422, "instances[1]"),
    ({"window": [window()[0]] * 5000}, 413, "exceeds the limit"),
    ({"instances": [window()] * 17}, 413, "instances: 17"),
    ({"window": window(), "surprise": True}, 422, "surprise"),
    ({"window": window()[:-1] + [[-1.0, *window()[-1][1:]]]}, 422, "window[127][0]: close must be above 0, got -1.0"),
]


@pytest.mark.parametrize("payload, status, field", BAD)
def test_bad_input_is_4xx_naming_the_field(client: httpx.Client, payload, status, field):
    response = client.post("/v1/predict", json=payload)
    assert response.status_code == status, response.text
    assert field in response.json()["detail"]


@pytest.mark.parametrize("raw", [b"{not json", b'{"window": [1, NaN', b"", b"\x00\xff"])
def test_malformed_bodies_are_400(client: httpx.Client, raw: bytes):
    response = client.post("/v1/predict", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 400 and "body" in response.json()["detail"]


@pytest.mark.parametrize("path", ["/v1/predict", "/v1/feedback"])
def test_nan_which_json_cannot_hold_is_422_naming_the_field(client: httpx.Client, path: str):
    raw = b'{"window": NaN}' if path == "/v1/predict" else b'{"request_id": "r", "actual": NaN}'
    response = client.post(path, content=raw, headers={"content-type": "application/json"})
    field = "window" if path == "/v1/predict" else "actual"
    assert (response.status_code, response.json()) == (422, {"detail": f"{field}: nan is not a finite number"})


@pytest.mark.parametrize("path", ["/v1/predict", "/v1/feedback"])
@pytest.mark.parametrize("chunked", [False, True])
def test_huge_body_is_413(client: httpx.Client, path: str, chunked: bool):
    body = b"[" + b"1," * 5_000_000 + b"1]"  # 10 MB, the limit 8 MiB
    # A generator is sent chunked, with no Content-Length: the router reads only up to the limit.
    content = (body[i : i + 65536] for i in range(0, len(body), 65536)) if chunked else body
    response = client.post(path, content=content)
    assert response.status_code == 413 and response.json()["detail"] == "body: over the limit of 8388608 bytes"


def test_bad_requests_do_not_disturb_good_ones(client: httpx.Client):
    def send(i: int) -> int:
        payload = {"window": window(i % 8)} if i % 2 else BAD[i % len(BAD)][0]
        return client.post("/v1/predict", json=payload).status_code

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(send, range(64)))
    good = [c for i, c in enumerate(codes) if i % 2]
    bad = [c for i, c in enumerate(codes) if not i % 2]
    assert good == [200] * 32
    assert all(400 <= c < 500 for c in bad)


# Values a mutated body puts where a valid one had its own: every JSON type, and the edges of each.
ODD_VALUES = [None, True, 0, -1, 2**63, 1e308, -0.0, 1e-320, 10**400, "", "x", "\u0000", "v1", "NaN", [], [[]], [None],
              {}, {"a": 1}, [1.0] * 200]


def mutated(value: object, rng: random.Random) -> object:
    """`value` with some of its parts, at any depth, replaced, dropped, repeated or added."""
    if rng.random() < 0.15:
        return rng.choice(ODD_VALUES)
    if isinstance(value, dict):
        value = {k: mutated(v, rng) if rng.random() < 0.3 else v for k, v in value.items() if rng.random() > 0.1}
        if rng.random() < 0.2:
            value[rng.choice(["window", "instances", "items", "steps", "split", "canary", "actual", "extra"])] = (
                rng.choice(ODD_VALUES))
        return value
    if isinstance(value, list) and value:
        value = [mutated(v, rng) if rng.random() < 0.05 else v for v in value]
        return rng.choice([value, value[: rng.randrange(len(value))], value + value[:3]])
    return value


def test_mutated_requests_are_never_5xx(client: httpx.Client):
    """Seeded mutations of valid bodies to every route that reads one. Admin changes name a
    member that does not exist, so the bodies are checked and nothing is changed; labels name
    predictions that do not exist."""
    rng = random.Random(5)
    valid = {
        "/v1/predict": lambda: rng.choice([{"window": window(rng.randrange(8)), "key": "k"},
                                           {"instances": [window(1), {"window": window(2), "request_id": "r"}]}]),
        "/v1/feedback": lambda: rng.choice([
            {"request_id": "fuzz-label", "actual": 0.5},
            {"items": [{"request_id": f"fuzz-label-{i}", "actual": 0.1} for i in range(3)]}]),
        "/v1/admin/rollouts/fuzz-nobody": lambda: {"canary": "v2", "steps": [5, 50, 100], "interval_s": 60,
                                                   "min_requests": 10, "error_tolerance": 0.1, "stable": "v1"},
        "/v1/admin/traffic/fuzz-nobody": lambda: {"split": {"v1": 0.9, "v2": 0.1}, "shadow": {"v2": 0.05}},
    }
    statuses = collections.Counter()
    for i in range(400):
        path = rng.choice(list(valid))
        body = json.dumps(mutated(valid[path](), rng)).encode()
        if i % 10 == 0:
            body = body[: rng.randrange(len(body))]
        method = client.put if "traffic" in path else client.post
        response = method(path, content=body, headers={"content-type": "application/json", **ADMIN})
        assert response.status_code < 500, (path, body[:300], response.text)
        statuses["unknown member" if "unknown member" in response.text else response.status_code] += 1
    # Bodies valid (admin ones then refused for their member) and invalid, each many times.
    assert min(statuses[200], statuses[422], statuses["unknown member"]) > 20, statuses


def test_members_endpoint_reports_manifests(client: httpx.Client):
    members = client.get("/v1/members").json()
    assert sorted(members) == sorted(MEMBERS)
    v1 = members["patchtst"]["versions"]["v1"]
    assert (v1["runtime"], v1["device"], v1["manifest"]["framework"]) == ("onnx", "cpu", "onnx")
    low, high = v1["manifest"]["output"]["bounds"]
    assert low < 0 < high and v1["rows_refused"] >= 0  # windows it gave no prediction for, so far


def test_member_calls_go_over_the_replicas_direct_channels_through_shared_memory(client: httpx.Client):
    def answered(count: str) -> dict[str, int]:
        """Calls answered over the channel, per model (over its versions: the split picks one)."""
        members = client.get("/v1/members").json()
        return {m: sum(info[count] for info in members[m]["versions"].values()) for m in MEMBERS}

    counts = ("channel_calls", "channel_calls_in_shared_memory")  # one node: the router and replicas share it
    before = {count: answered(count) for count in counts}
    for i in range(5):
        assert client.post("/v1/predict", json={"window": window(i)}).json()["degraded"] is False
    after = {count: answered(count) for count in counts}
    for count in counts:
        assert all(after[count][m] - before[count][m] >= 5 for m in MEMBERS), (count, before, after)


def test_a_member_replica_that_dies_degrades_answers_until_serve_replaces_it(client: httpx.Client):
    def nhits() -> dict:
        return client.get("/v1/members").json()["nhits"]["versions"]["v1"]

    dead = nhits()["pid"]
    os.kill(dead, signal.SIGKILL)  # as a native crash or the kernel's OOM killer ends a replica
    answers: list[httpx.Response] = []

    def answer(whole: bool) -> bool:
        answers.append(client.post("/v1/predict", json={"window": window(len(answers) % len(WINDOWS))}))
        return answers[-1].status_code == 200 and answers[-1].json()["degraded"] is not whole

    wait_until(lambda: answer(whole=False), 30, "an answer without nhits")
    # Each of the two routers finds the new replica by itself: whole answers from both, in a row.
    wait_until(lambda: all([answer(whole=True) for _ in range(6)]), 120, "nhits-v1 answering again")
    assert {response.status_code for response in answers} == {200}
    assert {tuple(response.json()["missing"]) for response in answers} <= {("nhits",), ()}
    replacement = nhits()
    assert replacement["pid"] != dead
    for i in range(5):  # over the new replica's direct channel again, not Serve's path
        assert client.post("/v1/predict", json={"window": window(i)}).json()["degraded"] is False
    assert nhits()["channel_calls"] >= replacement["channel_calls"] + 5


def test_raising_and_hanging_members_degrade_the_answer(client: httpx.Client):
    answer = client.post("/faulty/v1/predict", json={"window": window()}).json()
    assert answer["degraded"] is True
    assert sorted(answer["missing"]) == ["broken", "stalled"]
    assert answer["members"]["xgboost"]["weight"] == pytest.approx(1.0)
    # The stalled member holds no request of ours hostage: the next answers come as fast.
    for _ in range(3):
        assert client.post("/faulty/v1/predict", json={"window": window()}).json()["missing"] == ["broken", "stalled"]


def test_no_member_answering_is_503(client: httpx.Client, serve_session):
    args = GraphArgs.model_validate({"router": {"num_cpus": 0.05, "deadline_s": 0.3},
                                     "state": {"url": serve_session.state_url.replace("ensemble.db", "dead.db")},
                                     "members": {"broken": {"versions": {"v1": {}}}}})
    config = args.model_dump(mode="json")
    members = {"broken": {"v1": FaultyMember.options(name="only-broken-v1").bind("only-broken-v1", "raise")}}
    app = EnsembleRouter.options(name="DeadRouter", ray_actor_options={"num_cpus": 0.05}).bind(
        config, members, CONTRACT, ControlPlane.bind(config))
    serve.run(app, name="dead", route_prefix="/dead")
    try:
        # HAProxy takes the new route a moment after the application runs (until then "/" has it).
        wait_until(lambda: client.get("/dead/healthz").status_code == 200, 30, "the /dead route")
        response = client.post("/dead/v1/predict", json={"window": window()})
        assert response.status_code == 503 and "no member answered" in response.json()["detail"]
    finally:
        serve.delete("dead")
