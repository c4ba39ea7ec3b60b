"""Typed application builders named by the Serve YAML files' `import_path`.

`build_app` builds the ensemble (router, control plane and, unless `member_apps`, every member
version); `build_member` builds one member version as its own application, so that a config
adding a version leaves the other members' applications, and so their replicas, untouched.

No postponed annotations: Serve reads `build_app`'s parameter type to validate the YAML args.
"""

from typing import Any

import orjson
from ray.serve import Application

from deployments.control import ControlPlane
from deployments.model import ModelDeployment
from deployments.router import EnsembleRouter
from ensemble.config import GraphArgs, MemberAppArgs, MemberVersionSpec, ReplicaSpec, deployment_name
from models.repository import read_manifest


def _thread_env(threads: int) -> dict[str, str]:
    # Set before the replica imports numpy/torch, so every framework's pool starts at this size.
    value = str(threads)
    return {name: value for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}


def _deployment_options(spec: ReplicaSpec) -> dict[str, Any]:
    options: dict[str, Any] = {
        "ray_actor_options": {
            "num_cpus": spec.num_cpus,
            "num_gpus": spec.num_gpus,
            "runtime_env": {"env_vars": _thread_env(spec.framework_threads)},
        },
        "max_ongoing_requests": spec.max_ongoing_requests,
        "max_surge_percent": spec.max_surge_percent,
    }
    if spec.autoscaling is not None:
        options["autoscaling_config"] = spec.autoscaling.to_serve()
    else:
        options["num_replicas"] = spec.num_replicas
    return options


def _member(model_root: str, model: str, version: str, spec: MemberVersionSpec) -> Application:
    # No access log per member call: the router logs each request, and a log line per call was
    # a twentieth of a member's CPU.
    options = {**_deployment_options(spec), "logging_config": {"enable_access_log": False}}
    return ModelDeployment.options(name=deployment_name(model, version), **options).bind(
        model_root,
        model,
        version,
        spec.framework_threads,
        "cuda" if spec.num_gpus > 0 else "cpu",
        spec.max_batch_rows,
    )


def build_member(args: MemberAppArgs) -> Application:
    """One member version as its own application (used with `GraphArgs.member_apps`)."""
    return _member(args.model_root, args.model, args.version, args)


def input_contract(args: GraphArgs) -> dict[str, Any]:
    """The window length, feature count and feature names every member agrees on, read from the
    manifests; a disagreement (another column order too) is a deploy error."""
    contracts = {}
    for model, spec in args.members.items():
        for version in spec.versions:
            given = read_manifest(args.model_root, model, version).input
            contracts[deployment_name(model, version)] = (given.window, given.n_features, tuple(given.features))
    distinct = set(contracts.values())
    if len(distinct) != 1:
        raise ValueError(f"members disagree on the input contract (window, features, their names): {contracts}")
    window, n_features, features = distinct.pop()
    # Limits that refuse every request are a deploy error, not a service answering 413 or 422.
    if args.router.max_rows < window:
        raise ValueError(f"router.max_rows {args.router.max_rows} is below the members' window of {window} rows: "
                         "every request would be refused")
    smallest = len(orjson.dumps({"window": [[0] * n_features] * window}))
    if args.router.max_body_bytes < smallest:
        raise ValueError(f"router.max_body_bytes {args.router.max_body_bytes} is below the smallest request body "
                         f"({smallest} bytes, one window of zeros): every request would be refused")
    return {"window": window, "n_features": n_features, "features": list(features)}


def build_app(args: GraphArgs) -> Application:
    # With member applications the router reaches each version by its application's name.
    members = {
        model: {
            version: deployment_name(model, version) if args.member_apps else _member(args.model_root, model, version, vspec)
            for version, vspec in spec.versions.items()
        }
        for model, spec in args.members.items()
    }
    config = args.model_dump(mode="json")
    return EnsembleRouter.options(**_deployment_options(args.router)).bind(
        config, members, input_contract(args), ControlPlane.bind(config)
    )
