"""Every Serve YAML is valid for Ray and for our builder; cluster.yaml passes Ray's validation."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from ray.serve import Application
from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
from ray.serve.schema import ServeDeploySchema

from ensemble.config import ENSEMBLE_IMPORT_PATH, MEMBER_IMPORT_PATH, GraphArgs, single_application
from graphs.ensemble import build_app, build_member, input_contract
from models.data import FEATURES, N_FEATURES, WINDOW
from models.repository import MANIFEST

ROOT = Path(__file__).resolve().parents[2]
GRAPHS = sorted((ROOT / "graphs").glob("*.yaml"))
BUILDERS = {ENSEMBLE_IMPORT_PATH: build_app, MEMBER_IMPORT_PATH: build_member}


def test_there_are_graphs():
    assert {"ensemble.yaml"} <= {p.name for p in GRAPHS} and len(GRAPHS) >= 2


@pytest.mark.parametrize("path", GRAPHS, ids=lambda p: p.name)
def test_graph_yaml_is_valid_serve_config_and_builder_args(path: Path, tiny_repo: Path):
    config = yaml.safe_load(path.read_text())
    schema = ServeDeploySchema.model_validate(config)
    for app in schema.applications:
        assert app.import_path in BUILDERS
        # Exactly what `serve run` / `serve deploy` do with the YAML's args.
        args = {**app.args, "model_root": str(tiny_repo)}
        built = call_user_app_builder_with_args_if_necessary(BUILDERS[app.import_path], args)
        assert isinstance(built, Application)
    # Every member version has its application and every member application a member.
    assert single_application(config).members


def test_member_apps_must_match_the_ensemble():
    config = yaml.safe_load((ROOT / "graphs" / "ensemble.yaml").read_text())
    apps = config["applications"]
    members = [a for a in apps if a["import_path"] == MEMBER_IMPORT_PATH]
    if not members:
        pytest.skip("graphs/ensemble.yaml runs its members inside the ensemble application")
    with pytest.raises(ValueError, match="needs an application"):
        single_application({"applications": [a for a in apps if a is not members[0]]})
    orphan = {**members[0], "name": "orphan-v1", "args": {**members[0]["args"], "model": "orphan"}}
    with pytest.raises(ValueError, match="no ensemble member uses"):
        single_application({"applications": [*apps, orphan]})
    elsewhere = {**members[0], "args": {**members[0]["args"], "model_root": "another_repo"}}
    with pytest.raises(ValueError, match="model_root 'another_repo' differs from the ensemble's"):
        single_application({"applications": [elsewhere if a is members[0] else a for a in apps]})
    ensemble = next(a for a in apps if a["import_path"] == ENSEMBLE_IMPORT_PATH)
    model = next(iter(ensemble["args"]["members"]))
    version = next(iter(ensemble["args"]["members"][model]["versions"]))
    ensemble["args"]["members"][model]["versions"][version] = {"num_cpus": 1}
    with pytest.raises(ValueError, match="set its resources in the application"):
        GraphArgs.model_validate(ensemble["args"])


def test_unknown_keys_are_rejected():
    args = single_application(yaml.safe_load((ROOT / "graphs" / "ensemble.yaml").read_text())).model_dump()
    GraphArgs.model_validate(args)
    with pytest.raises(ValueError, match="extra"):
        GraphArgs.model_validate({**args, "surprise": 1})
    bad_member = {**args, "members": {"xgboost": {"versions": {"v1": {"num_cpus": 1, "gpus": 1}}}}}
    with pytest.raises(ValueError, match="extra"):
        GraphArgs.model_validate(bad_member)


@pytest.mark.parametrize("member", [{"versions": {"v1": {}}, "prior": float("inf")},
                                    {"versions": {"v1": {"num_cpus": float("inf")}}},
                                    {"versions": {"v1": {"num_gpus": float("nan")}}}])
def test_infinity_and_nan_are_no_setting(member):
    """YAML's .inf passed: a prior of it made every trust weight NaN, num_cpus failed the build
    with an OverflowError."""
    with pytest.raises(ValueError, match="finite"):
        GraphArgs.model_validate({"members": {"xgboost": member}})

@pytest.mark.parametrize(
    "traffic, message",
    [({"v1": 0.5, "v2": 0.6}, "sum to 1"), ({"v1": -0.2, "v2": 1.2}, ">= 0"), ({"v1": 0.5, "v9": 0.5}, "not deployed")],
)
def test_invalid_splits_are_rejected(traffic, message):
    member = {"versions": {"v1": {}, "v2": {}}, "traffic": traffic}
    with pytest.raises(ValueError, match=message):
        GraphArgs.model_validate({"members": {"patchtst": member}})


@pytest.mark.parametrize("path", GRAPHS, ids=lambda p: p.name)
def test_graph_yaml_leaves_the_http_host_to_ray(path: Path):
    # Under HAProxy each node's HAProxy forwards to replicas on other nodes, which a replica bound
    # to 127.0.0.1 refuses (bench/two_nodes.sh); Ray's own default host fits each ingress.
    assert "host" not in yaml.safe_load(path.read_text()).get("http_options", {})


def _make_serve_env() -> list[str]:
    return next(line.split("?=", 1)[1].split() for line in (ROOT / "Makefile").read_text().splitlines()
                if line.startswith("SERVE_ENV ?="))


def test_cluster_nodes_start_ray_with_the_settings_of_make_serve():
    serve_env = _make_serve_env()
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    starts = [c for key in ("head_start_ray_commands", "worker_start_ray_commands") for c in config[key]
              if "ray start" in c]
    assert len(starts) == 2
    for command in starts:  # every node's Ray needs the flags: each node runs its own ingress
        assert set(serve_env) <= set(command.split("ray start")[0].split())


def test_the_benchmark_measures_make_serve_under_its_settings():
    from bench.servers import TUNING_ENV, SETTINGS

    assert dict(item.split("=", 1) for item in _make_serve_env()) == {**SETTINGS["throughput+haproxy"], **TUNING_ENV}


def test_cluster_yaml_passes_ray_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    validate_config(prepare_config(config))  # what `ray up` runs before anything starts
    assert {"head", "cpu_worker", "gpu_worker"} <= set(config["available_node_types"])
    assert any("serve deploy graphs/" in c for c in config["head_start_ray_commands"])


def test_member_transport_over_http_needs_member_apps_and_their_routes():
    config = yaml.safe_load((ROOT / "graphs" / "ensemble.yaml").read_text())
    ensemble = next(a for a in config["applications"] if a["import_path"] == ENSEMBLE_IMPORT_PATH)
    router = GraphArgs.model_validate(ensemble["args"]).router
    assert router.member_url is not None
    # auto: over HTTP only behind Serve's HAProxy ingress.
    assert router.calls_over_http({"RAY_SERVE_ENABLE_HA_PROXY": "1"})
    assert not router.calls_over_http({})
    assert not router.model_copy(update={"member_transport": "handle"}).calls_over_http({"RAY_SERVE_ENABLE_HA_PROXY": "1"})
    # Folded into one application, members have no routes: handles.
    folded = single_application(config).router
    assert folded.member_url is None and not folded.calls_over_http({"RAY_SERVE_ENABLE_HA_PROXY": "1"})
    with pytest.raises(ValueError, match="needs member_apps"):
        GraphArgs.model_validate({**ensemble["args"], "member_apps": False, "members": {"xgboost": {"versions": {"v1": {}}}}})
    with pytest.raises(ValueError, match="needs member_url"):
        GraphArgs.model_validate({**ensemble["args"], "router": {"member_transport": "http"}})
    member = next(a for a in config["applications"] if a["import_path"] == MEMBER_IMPORT_PATH)
    member["route_prefix"] = "/elsewhere"
    with pytest.raises(ValueError, match="needs route_prefix /members/"):
        single_application(config)


def test_the_router_and_members_keep_serving_until_their_replacements_are_ready(tiny_repo: Path):
    # At Ray's default (0) Serve stops a one-replica deployment when its replacement starts, and
    # for the router HAProxy then has no replica to send requests to (BENCHMARKS.md, "Deploying
    # under load").
    config = yaml.safe_load((ROOT / "graphs" / "ensemble.yaml").read_text())
    for app in config["applications"]:
        built = call_user_app_builder_with_args_if_necessary(
            BUILDERS[app["import_path"]], {**app["args"], "model_root": str(tiny_repo)})
        assert built._bound_deployment._deployment_config.max_surge_percent == 100, app["name"]


def _logical_cpus(path: Path) -> tuple[dict[str, float], float]:
    """Logical CPUs of a graph at its minimum scale: per member application, and the ensemble's
    router and control plane together."""
    from deployments.control import ControlPlane
    from ensemble.config import MemberAppArgs, RouterSpec

    config = yaml.safe_load(path.read_text())
    members, ensemble = {}, 0.0
    for app in config["applications"]:
        if app["import_path"] == MEMBER_IMPORT_PATH:
            spec = MemberAppArgs.model_validate(app["args"])
            members[app["name"]] = spec.num_cpus * (spec.autoscaling.min_replicas if spec.autoscaling else spec.num_replicas)
        else:
            router = RouterSpec.model_validate(app["args"].get("router", {}))
            ensemble = router.num_cpus * router.num_replicas + ControlPlane.ray_actor_options["num_cpus"]
    return members, ensemble


@pytest.mark.parametrize("start, target", [(a.name, b.name) for a in GRAPHS for b in GRAPHS if a != b])
def test_deploying_any_graph_onto_another_fits_two_cpus(start: str, target: str):
    # Serve starts the new router and control plane before the old ones have drained, and `make
    # deploy` keeps the member applications the target drops until those it adds run: all must
    # fit the 2-CPU machine at once, or the new router waits for CPUs and the deploy for the drains.
    before, old_ensemble = _logical_cpus(ROOT / "graphs" / start)
    after, new_ensemble = _logical_cpus(ROOT / "graphs" / target)
    assert round(sum({**before, **after}.values()) + old_ensemble + new_ensemble, 6) <= 2.0


def test_members_must_agree_on_the_feature_names_too(tiny_repo: Path, tmp_path: Path):
    """The router checks each window against the names (a price above zero): every member must
    read the same columns, in the same order."""
    root = tmp_path / "repo"
    shutil.copytree(tiny_repo, root)
    config = yaml.safe_load((ROOT / "graphs" / "ensemble.yaml").read_text())
    args = GraphArgs.model_validate({**single_application(config).model_dump(exclude_unset=True), "model_root": str(root)})
    assert input_contract(args) == {"window": WINDOW, "n_features": N_FEATURES, "features": list(FEATURES)}
    manifest = root / "lstm" / "v1" / MANIFEST
    swapped = json.loads(manifest.read_text())
    swapped["input"]["features"][:2] = swapped["input"]["features"][1::-1]  # high, close, ...
    manifest.write_text(json.dumps(swapped))
    with pytest.raises(ValueError, match="members disagree on the input contract"):
        input_contract(args)


@pytest.mark.parametrize("router, message", [({"max_rows": WINDOW - 1}, "max_rows"),
                                             ({"max_body_bytes": 1024}, "max_body_bytes")])
def test_router_limits_that_would_refuse_every_request_are_a_deploy_error(tiny_repo: Path, router, message):
    config = yaml.safe_load((ROOT / "graphs" / "ensemble.yaml").read_text())
    args = single_application(config).model_dump(exclude_unset=True) | {"model_root": str(tiny_repo)}
    with pytest.raises(ValueError, match=f"{message} .* every request would be refused"):
        input_contract(GraphArgs.model_validate({**args, "router": {**args.get("router", {}), **router}}))
