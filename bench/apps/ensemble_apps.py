"""(3) The project's ensemble, and its variants for the member-count and deadline checks.

All three are `graphs.ensemble:build_app` on GraphArgs derived from the Serve YAML; the
deadline check then swaps one member's deployment for one that answers 200 ms late.
"""
from __future__ import annotations

import asyncio
import os
from pathlib import Path

import numpy as np
import yaml
from ray import serve
from ray.serve import Application

from bench.apps.graph_args import DEFAULT_GRAPH, absolute_root, alias_repo, build, replace_bound, yaml_args

# For the 2-vs-8 check: eight distinct trained model versions, each served as its own member.
EIGHT = (("xgboost", "v1"), ("lightgbm", "v1"), ("xgboost", "v2"), ("lightgbm", "v2"),
         ("lstm", "v1"), ("lstm", "v2"), ("patchtst", "v1"), ("nhits", "v1"))
ALIAS_REPO = os.environ.get("BENCH_ALIAS_REPO", "/tmp/ensemble-bench-aliases")
STALLED = "stalled"
# Same for 2 and 8 members: one fixed replica each, small enough that eight members, the router
# and the control plane fit Ray's two logical CPUs (the YAML's 0.25 with autoscaling would not).
MEMBER_SPEC = {"num_cpus": 0.15, "num_replicas": 1}


def ensemble_apps(port: int, graph: str | None = None) -> list[tuple[str, str | None, Application]]:
    """The YAML's applications as `serve run` deploys them: (name, route prefix, application),
    member applications first. Only the state file moves to a private path, the ensemble is
    served at `/`, and `router.member_url` points at this run's port."""
    from ensemble.config import ENSEMBLE_IMPORT_PATH, MemberAppArgs
    from graphs.ensemble import build_member

    apps = []
    for app in yaml.safe_load(Path(graph or DEFAULT_GRAPH).read_text())["applications"]:
        args = {**app.get("args", {}), "model_root": absolute_root(app.get("args", {}))}
        if app["import_path"] == ENSEMBLE_IMPORT_PATH:
            if args.get("router", {}).get("member_url"):
                args["router"] = {**args["router"], "member_url": f"http://127.0.0.1:{port}"}
            ensemble = ("bench", "/", build(args, "ensemble"))
        else:
            apps.append((app["name"], app.get("route_prefix"), build_member(MemberAppArgs.model_validate(args))))
    return [*apps, ensemble]


def members_app(n: int, graph: str | None = None):
    """The first `n` of EIGHT as members, each one replica of MEMBER_SPEC, the YAML's router."""
    base = yaml_args(graph)
    aliases = {f"{model}_{version}": (model, version) for model, version in EIGHT[:n]}
    members = {alias: {"versions": {"v1": MEMBER_SPEC}} for alias in aliases}
    root = alias_repo(base["model_root"], f"{ALIAS_REPO}-{os.getpid()}", aliases)
    return build({**base, "model_root": str(root), "members": members}, f"members{n}")


@serve.deployment(ray_actor_options={"num_cpus": 0.05})
class StalledMember:
    """A member that always answers, `delay_s` late."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s

    async def predict(self, windows: np.ndarray) -> np.ndarray:
        await asyncio.sleep(self.delay_s)
        return np.zeros(len(windows), dtype=np.float32)

    def info(self) -> dict:
        return {"deployment": f"{STALLED}-v1", "device": "cpu", "manifest": {}}


def deadline_app(deadline_s: float = 0.025, delay_s: float = 0.2, graph: str | None = None):
    """The YAML's five members plus a sixth that stalls `delay_s`, under router deadline `deadline_s`."""
    base = yaml_args(graph)
    root = alias_repo(base["model_root"], f"{ALIAS_REPO}-{os.getpid()}", {STALLED: ("xgboost", "v1")})
    members = {**base["members"], STALLED: {"versions": {"v1": {"num_cpus": 0.05}}}}
    router = {**base.get("router", {}), "deadline_s": deadline_s}
    app = build({**base, "model_root": str(root), "members": members, "router": router}, "deadline")
    return replace_bound(app, f"{STALLED}-v1", StalledMember.options(name=f"{STALLED}-v1").bind(delay_s))
