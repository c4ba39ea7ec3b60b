"""(2) A naive Ray Serve fan-out: per request, one handle call to each of the five members, averaged.

No coalescing, no deadline, no trust: the members are the very deployments the project's
builder binds for the YAML (same options), and the ingress gets the router's resources.
"""
from __future__ import annotations

import asyncio

import numpy as np
import orjson
from ray import serve
from starlette.requests import Request
from starlette.responses import Response

from bench.apps.graph_args import bound_deployments, build, yaml_args
from ensemble.config import GraphArgs, deployment_name


@serve.deployment
class NaiveFanout:
    def __init__(self, members: dict) -> None:
        self.members = members  # name -> DeploymentHandle

    async def __call__(self, request: Request) -> Response:
        body = orjson.loads(await request.body())
        windows = np.asarray(body["window"], dtype=np.float32)[None, -128:]
        outputs = await asyncio.gather(*(h.predict.remote(windows) for h in self.members.values()))
        members = {name: float(out[0]) for name, out in zip(self.members, outputs)}
        answer = {"request_id": body.get("request_id", ""), "prediction": float(np.mean(list(members.values()))),
                  "members": members}
        return Response(orjson.dumps(answer), media_type="application/json")


def first_versions(args: dict) -> list[str]:
    """Deployment names of each member's first version (the one its default split serves)."""
    graph = GraphArgs.model_validate(args)
    return [deployment_name(model, next(iter(spec.versions))) for model, spec in graph.members.items()]


def build_app(graph: str | None = None):
    args = yaml_args(graph)
    project = build(args, "naive")
    bound = bound_deployments(project)
    router = project._bound_deployment
    return NaiveFanout.options(
        name="NaiveFanout", ray_actor_options=router.ray_actor_options, max_ongoing_requests=router.max_ongoing_requests
    ).bind({name: bound[name] for name in first_versions(args)})
