"""(3) The project's ensemble, and its variants for the member-count and deadline checks.

Each is deployed the way `make serve` deploys `graphs/ensemble.yaml`: one application per
member version (`graphs.ensemble:build_member`) at its `/members/...` route, then the ensemble
(`graphs.ensemble:build_app` with `member_apps`) calling them at the run's port, so members are
reached over HTTP when Serve runs HAProxy and through handles otherwise (`member_transport:
auto`). The deadline check then swaps one member version for one that answers 200 ms late;
the GPU check gives each net version a share of a GPU.
"""
from __future__ import annotations

import asyncio
import os
from typing import Any

import numpy as np
from ray import serve
from ray.serve import Application
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from bench.apps.graph_args import alias_repo, build, yaml_args
from ensemble.wire import CONTENT_TYPE, decode_windows, encode

# For the 2-vs-8 check: eight distinct trained model versions, each served as its own member.
EIGHT = (("xgboost", "v1"), ("lightgbm", "v1"), ("xgboost", "v2"), ("lightgbm", "v2"),
         ("lstm", "v1"), ("lstm", "v2"), ("patchtst", "v1"), ("nhits", "v1"))
ALIAS_REPO = os.environ.get("BENCH_ALIAS_REPO", "/tmp/ensemble-bench-aliases")
STALLED = "stalled"
# Same for 2 and 8 members: one fixed replica each, small enough that eight members, the router
# and the control plane fit Ray's two logical CPUs (the YAML's 0.2 with autoscaling would not).
MEMBER_SPEC = {"num_cpus": 0.15, "num_replicas": 1}

Apps = list[tuple[str, str | None, Application]]


def member_applications(args: dict[str, Any]) -> Apps:
    """One application per member version of `args` (an ensemble's args, member settings
    folded in): (deployment name, its `/members/...` route, `build_member` of its settings)."""
    from ensemble.config import MemberAppArgs, deployment_name, member_route
    from graphs.ensemble import build_member

    return [
        (deployment_name(model, version), member_route(model, version),
         build_member(MemberAppArgs.model_validate(
             {**settings, "model_root": args["model_root"], "model": model, "version": version})))
        for model, spec in args["members"].items()
        for version, settings in spec["versions"].items()
    ]


def _as_member_apps(args: dict[str, Any], port: int, tag: str) -> Apps:
    """`args` as the member applications, then the ensemble at `/` calling them at `port`."""
    router = {**args.get("router", {}), "member_url": f"http://127.0.0.1:{port}"}
    # With member applications a version's settings live in its application, not the ensemble.
    members = {model: {**spec, "versions": dict.fromkeys(spec["versions"], {})} for model, spec in args["members"].items()}
    ensemble = build({**args, "member_apps": True, "members": members, "router": router}, tag)
    return [*member_applications(args), ("bench", "/", ensemble)]


def ensemble_apps(port: int, graph: str | None = None) -> Apps:
    """The YAML's applications as `serve run` deploys them; only the state file moves to a
    private path, and `router.member_url` points at this run's port."""
    return _as_member_apps(yaml_args(graph), port, "ensemble")


def members_apps(n: int, port: int, graph: str | None = None) -> Apps:
    """The first `n` of EIGHT as members, each one replica of MEMBER_SPEC, the YAML's router."""
    base = yaml_args(graph)
    aliases = {f"{model}_{version}": (model, version) for model, version in EIGHT[:n]}
    members = {alias: {"versions": {"v1": MEMBER_SPEC}} for alias in aliases}
    root = alias_repo(base["model_root"], f"{ALIAS_REPO}-{os.getpid()}", aliases)
    return _as_member_apps({**base, "model_root": str(root), "members": members}, port, f"members{n}")


def gpu_apps(port: int, share: float, graph: str | None = None) -> Apps:
    """The YAML's applications with `share` of a GPU for every net version (one that ships torch
    weights, which torch serves on CUDA); the trees stay on the CPU."""
    from models.repository import TORCH_WEIGHTS, read_manifest

    base = yaml_args(graph)

    def with_share(model: str, version: str, settings: dict[str, Any]) -> dict[str, Any]:
        is_net = TORCH_WEIGHTS in read_manifest(base["model_root"], model, version).artifacts
        return {**settings, "num_gpus": share} if is_net else settings

    members = {model: {**spec, "versions": {v: with_share(model, v, s) for v, s in spec["versions"].items()}}
               for model, spec in base["members"].items()}
    return _as_member_apps({**base, "members": members}, port, "gpu")


@serve.deployment(ray_actor_options={"num_cpus": 0.05}, logging_config={"enable_access_log": False})
class StalledMember:
    """A member version that always answers, `delay_s` late, over a handle or its HTTP route."""

    def __init__(self, delay_s: float, window: int, n_features: int) -> None:
        self.delay_s = delay_s
        self.shape = (window, n_features)

    async def predict(self, windows: np.ndarray) -> np.ndarray:
        await asyncio.sleep(self.delay_s)
        return np.zeros(len(windows), dtype=np.float32)

    def info(self) -> dict:
        return {"deployment": f"{STALLED}-v1", "device": "cpu", "manifest": {}}

    async def __call__(self, request: Request) -> Response:
        if request.method == "GET":
            return JSONResponse(self.info())
        windows = decode_windows(await request.body(), *self.shape)
        return Response(encode(await self.predict(windows)), media_type=CONTENT_TYPE)


def deadline_apps(port: int, deadline_s: float = 0.025, delay_s: float = 0.2, graph: str | None = None) -> Apps:
    """The YAML's five members plus a sixth that stalls `delay_s`, under router deadline `deadline_s`."""
    from ensemble.config import deployment_name
    from models.repository import read_manifest

    base = yaml_args(graph)
    root = alias_repo(base["model_root"], f"{ALIAS_REPO}-{os.getpid()}", {STALLED: ("xgboost", "v1")})
    members = {**base["members"], STALLED: {"versions": {"v1": {"num_cpus": 0.05}}}}
    router = {**base.get("router", {}), "deadline_s": deadline_s}
    apps = _as_member_apps({**base, "model_root": str(root), "members": members, "router": router}, port, "deadline")
    contract = read_manifest(root, STALLED, "v1").input
    stalled = deployment_name(STALLED, "v1")
    replacement = StalledMember.options(name=stalled).bind(delay_s, contract.window, contract.n_features)
    return [(name, route, replacement if name == stalled else app)
            for name, route, app in apps]
