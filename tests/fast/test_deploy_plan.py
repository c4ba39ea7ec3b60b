"""`make deploy`: applications the target drops are deleted only once the target's run, and a
target that does not come up is undone (ensemble.deploy_plan, graphs.deploy)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ensemble.deploy_plan import deployed_configs, progress, still_deploying, surge_config
from graphs.deploy import DeployFailed, deploy, main, read_config

ROOT = Path(__file__).resolve().parents[2]


def app(name: str, prefix: str | None = None, **args: Any) -> dict[str, Any]:
    return {"name": name, "route_prefix": prefix or f"/{name}", "import_path": "graphs.ensemble:build_member", "args": args}


class FakeServe:
    """Serve's declarative semantics as a deploy sees them: applications a config drops go at
    once; new or changed ones deploy for `polls_to_run` polls, then run (or fail if named in `failing`)."""

    def __init__(self, apps: list[dict[str, Any]], polls_to_run: int = 3, failing: frozenset[str] = frozenset()) -> None:
        self.apps = {a["name"]: {"deployed_app_config": a, "status": "RUNNING", "polls": 0} for a in apps}
        self.polls_to_run, self.failing = polls_to_run, failing
        self.deployed: list[list[str]] = []
        self.seen: list[dict[str, str]] = []  # statuses at each poll

    def details(self) -> dict[str, Any]:
        for state in self.apps.values():
            if state["status"] == "DEPLOYING":
                state["polls"] += 1
                if state["polls"] >= self.polls_to_run:
                    name = state["deployed_app_config"]["name"]
                    state["status"] = "DEPLOY_FAILED" if name in self.failing else "RUNNING"
        self.seen.append({name: state["status"] for name, state in self.apps.items()})
        return {"applications": {name: dict(state) for name, state in self.apps.items()}}

    def deploy(self, config: dict[str, Any]) -> None:
        self.deployed.append([a["name"] for a in config["applications"]])
        new = {a["name"]: a for a in config["applications"]}
        self.apps = {name: state for name, state in self.apps.items() if name in new}
        for name, a in new.items():
            if name not in self.apps or self.apps[name]["deployed_app_config"] != a:
                self.apps[name] = {"deployed_app_config": a, "status": "DEPLOYING", "polls": 0}


V1 = [app("ensemble", "/", members=["xgboost-v1"]), app("xgboost-v1")]
V2 = [app("ensemble", "/", members=["xgboost-v2"]), app("xgboost-v2")]


def test_the_dropped_versions_serve_until_the_new_ones_run():
    serve = FakeServe(V1)
    deploy(serve, {"applications": V2}, timeout_s=10, poll_s=0, say=lambda _: None)
    assert serve.deployed == [["ensemble", "xgboost-v2", "xgboost-v1"], ["ensemble", "xgboost-v2"]]
    # xgboost-v1 was there at every poll until the new router and xgboost-v2 ran.
    before_running = [s for s in serve.seen if s.get("xgboost-v2") != "RUNNING" or s["ensemble"] != "RUNNING"]
    assert before_running and all(s.get("xgboost-v1") == "RUNNING" for s in before_running)
    assert set(serve.apps) == {"ensemble", "xgboost-v2"}


def test_a_config_that_only_adds_is_applied_once():
    serve = FakeServe(V1)
    deploy(serve, {"applications": [*V1, app("xgboost-v2")]}, timeout_s=10, poll_s=0, say=lambda _: None)
    assert serve.deployed == [["ensemble", "xgboost-v1", "xgboost-v2"]]


@pytest.mark.parametrize("failing, timeout_s", [(frozenset({"xgboost-v2"}), 10.0), (frozenset(), 0.0)],
                         ids=["failed", "timed-out"])
def test_a_target_that_does_not_come_up_is_undone(failing: frozenset[str], timeout_s: float):
    serve = FakeServe(V1, failing=failing)
    with pytest.raises(DeployFailed, match="xgboost-v2"):
        deploy(serve, {"applications": V2}, timeout_s=timeout_s, poll_s=0, say=lambda _: None)
    assert serve.deployed[-1] == ["ensemble", "xgboost-v1"]
    assert {name: s["deployed_app_config"] for name, s in serve.apps.items()} == {a["name"]: a for a in V1}


def test_a_dropped_application_whose_prefix_the_target_reuses_is_not_kept():
    deployed = {"old": app("old", "/shared"), "other": app("other")}
    surge = surge_config({"applications": [app("new", "/shared")]}, deployed)
    assert surge is not None and [a["name"] for a in surge["applications"]] == ["new", "other"]
    assert surge_config({"applications": [app("new", "/shared"), app("other")]}, deployed) is None
    # No route_prefix is Serve's default, "/"; null is no route at all.
    unset = {k: v for k, v in app("old").items() if k != "route_prefix"}
    assert surge_config({"applications": [app("new", "/")]}, {"old": unset}) is None
    assert surge_config({"applications": [unset | {"name": "new"}]}, {"old": app("old", "/")}) is None
    no_route = app("old") | {"route_prefix": None}
    assert surge_config({"applications": [app("new", "/")]}, {"old": no_route})["applications"][1] == no_route


def test_only_applications_deployed_from_a_config_are_kept():
    # serve.run's applications have no deployed_app_config; a config deploy leaves them alone.
    details = {"applications": {"byconfig": {"deployed_app_config": app("byconfig"), "status": "RUNNING"},
                                "byrun": {"deployed_app_config": None, "status": "RUNNING"}}}
    assert list(deployed_configs(details)) == ["byconfig"]


def test_progress_and_what_a_starting_router_waits_for():
    current = {"a": "RUNNING", "b": "DEPLOYING", "c": "DEPLOY_FAILED", "d": "UNHEALTHY"}
    assert progress(current, ["a"]) == "running"
    assert progress(current, ["a", "b"]) == "waiting"
    assert progress(current, ["a", "missing"]) == "waiting"
    assert progress(current, ["b", "c"]) == "failed"
    # A router waits for members still deploying or not yet created, not for failed ones.
    assert still_deploying(current, ["a", "b", "c", "d", "missing"]) == ["b", "missing"]


def test_the_graphs_read_as_serve_deploy_sends_them():
    config = read_config(ROOT / "graphs" / "ensemble-v2.yaml")
    assert {a["name"] for a in config["applications"]} >= {"ensemble", "xgboost-v2"}
    v1 = read_config(ROOT / "graphs" / "ensemble.yaml")
    deployed = {a["name"]: a for a in v1["applications"]}
    surge = surge_config(config, deployed)
    assert surge is not None
    assert {a["name"] for a in surge["applications"]} == set(deployed) | {a["name"] for a in config["applications"]}


@pytest.mark.parametrize("edit, message", [
    (lambda text: text.replace("model_root: model_repo", "model_root: other_repo", 2).replace(
        "model_root: other_repo", "model_root: model_repo", 1), "differs from the ensemble's"),
    (lambda text: text.replace("deadline_s: 1.0", "deadline_s: -1"), "deadline_s"),
    (lambda text: text.replace("version: v1", "version: v9", 1), "needs an application"),
    (lambda text: text + "  - [\n", "not YAML"),
])
def test_a_config_its_applications_would_refuse_deploys_nothing(tmp_path: Path, capsys, edit, message: str):
    config = tmp_path / "graph.yaml"
    config.write_text(edit((ROOT / "graphs" / "ensemble.yaml").read_text()))
    with pytest.raises(ValueError, match=message):
        read_config(config)
    # Refused before Serve is reached: no instance answers at this address.
    assert main([str(config), "--address", "http://127.0.0.1:9"]) == 2
    assert message in capsys.readouterr().err
    assert main([str(config), "--check"]) == 2  # as `make serve` runs it first


def test_the_graphs_pass_make_serves_check():
    for graph in sorted((ROOT / "graphs").glob("*.yaml")):
        assert main([str(graph), "--check"]) == 0, graph
