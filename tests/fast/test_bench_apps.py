"""The harness's Serve apps are the project's builder's graph, changed only where a check needs it.

Builds (binds) the applications without starting Ray, on the tiny trained repository.
"""
from pathlib import Path

import pytest
import yaml

from bench import net_runtimes, tree_engines
from bench.apps import ensemble_apps, naive
from bench.apps.graph_args import alias_repo, yaml_args
from models.repository import read_manifest

GRAPH = Path(__file__).resolve().parents[2] / "graphs" / "ensemble.yaml"


@pytest.fixture
def graph(tiny_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """graphs/ensemble.yaml pointed at the tiny repository; state and aliases under tmp_path."""
    config = yaml.safe_load(GRAPH.read_text())
    for app in config["applications"]:
        app["args"]["model_root"] = str(tiny_repo)
    path = tmp_path / "graph.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    monkeypatch.setenv("BENCH_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setattr(ensemble_apps, "ALIAS_REPO", str(tmp_path / "aliases"))
    return str(path)


def test_alias_is_a_valid_version_of_a_new_name(tiny_repo: Path, tmp_path: Path) -> None:
    root = alias_repo(tiny_repo, tmp_path / "r", {"xgboost_v2": ("xgboost", "v2")})
    manifest = read_manifest(root, "xgboost_v2", "v1")
    assert manifest.artifacts == read_manifest(tiny_repo, "xgboost", "v2").artifacts
    assert read_manifest(root, "lstm", "v1").name == "lstm"


def test_naive_fanout_binds_the_builders_member_deployments(graph: str) -> None:
    app = naive.build_app(graph)
    members = app._bound_deployment.init_args[0]
    assert list(members) == ["xgboost-v1", "lightgbm-v1", "patchtst-v1", "lstm-v1", "nhits-v1"]
    project = {name: app for name, _, app in ensemble_apps.ensemble_apps(8000, graph)}
    assert members["lstm-v1"]._bound_deployment == project["lstm-v1"]._bound_deployment


def test_deadline_apps_swap_in_one_stalled_member(graph: str) -> None:
    apps = {name: (route, app) for name, route, app in ensemble_apps.deadline_apps(8123, graph=graph)}
    route, stalled = apps["stalled-v1"]
    assert stalled._bound_deployment.func_or_class is ensemble_apps.StalledMember.func_or_class
    assert route == "/members/stalled-v1" and {"xgboost-v1", "nhits-v1", "bench"} <= set(apps)
    router_args = apps["bench"][1]._bound_deployment.init_args[0]["router"]
    assert router_args["deadline_s"] == 0.025 and router_args["member_url"] == "http://127.0.0.1:8123"
    assert yaml_args(graph)["router"]["deadline_s"] != 0.025  # the YAML itself is untouched


def test_gpu_apps_give_each_net_a_gpu_share_and_ask_for_cuda(graph: str) -> None:
    apps = {name: app._bound_deployment for name, _, app in ensemble_apps.gpu_apps(8123, 0.15, graph)}
    device = 4  # ModelDeployment(model_root, model, version, num_threads, device, max_batch_rows)
    for name in ("patchtst-v1", "lstm-v1", "nhits-v1"):
        assert apps[name].ray_actor_options["num_gpus"] == 0.15 and apps[name].init_args[device] == "cuda"
    for name in ("xgboost-v1", "lightgbm-v1"):
        assert apps[name].ray_actor_options["num_gpus"] == 0 and apps[name].init_args[device] == "cpu"
    assert list(apps)[-1] == "bench"


@pytest.mark.parametrize("n", [2, 8])
def test_members_apps_serve_n_distinct_versions(graph: str, n: int) -> None:
    names = [name for name, _, _ in ensemble_apps.members_apps(n, 8123, graph)]
    assert len(names) == n + 1 and len(set(names)) == n + 1 and names[-1] == "bench"


def test_the_in_process_peers_serve_the_graphs_members() -> None:
    from bench.apps import MEMBERS

    assert [f"{model}-{version}" for model, version in MEMBERS] == naive.first_versions(yaml_args(GRAPH))


def test_ensemble_runs_as_the_yamls_applications_with_member_routes(graph: str) -> None:
    apps = ensemble_apps.ensemble_apps(8123, graph)
    assert [name for name, _, _ in apps] == ["xgboost-v1", "lightgbm-v1", "patchtst-v1", "lstm-v1", "nhits-v1", "bench"]
    assert apps[0][1] == "/members/xgboost-v1" and apps[-1][1] == "/"
    router_args = apps[-1][2]._bound_deployment.init_args[0]["router"]
    assert router_args["member_url"] == "http://127.0.0.1:8123"


def test_hot_path_bench_runs_and_reports_cpu() -> None:
    import asyncio

    from bench.hot_path import cpu_ms_per_request

    assert asyncio.run(cpu_ms_per_request(requests=40, connections=8)) > 0


def test_net_runtimes_compares_torch_and_onnx_on_the_same_weights(tiny_repo: Path) -> None:
    rows = net_runtimes.compare(str(tiny_repo), "v1", seconds=0.0, rounds=1)
    assert [(row["net"], row["batch"]) for row in rows] == [
        (f"{net}-v1", batch) for net in ("lstm", "nhits", "patchtst") for batch in net_runtimes.BATCHES]
    assert all(ms > 0 for row in rows for ms in row["ms_per_call"].values())
    assert net_runtimes.table(rows).count("\n") == len(rows) + 1


def test_tree_engines_times_every_tree_version_both_ways(tiny_repo: Path) -> None:
    results = tree_engines.measure(str(tiny_repo), rounds=1, number=1)
    assert set(results) == {f"{model}-{version}" for model in ("xgboost", "lightgbm") for version in ("v1", "v2")}
    for version, timings in results.items():
        framework = version.split("-")[0]
        assert set(timings) == {f"{what} {rows} rows" for what in (framework, "onnxruntime", "engineer", "runtime.predict")
                                for rows in tree_engines.ROWS}
        assert all(us > 0 for us in timings.values())
