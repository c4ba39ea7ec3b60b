"""The ensemble graph as the project builds it, and the few surgical changes the benchmarks need.

Every Serve app of the harness starts from `graphs.ensemble:build_app` on a `GraphArgs`, so
member deployments carry exactly the builder's options; the harness only reads bound members
out of the built application, never re-derives what the builder does. Only Ray's own
`Application` internals are relied on (`_bound_deployment`).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DEFAULT_GRAPH = REPO / "graphs" / "ensemble.yaml"


def yaml_args(graph: str | Path | None = None) -> dict[str, Any]:
    """The ensemble of a Serve YAML as one application's args (member applications folded in),
    with `model_root` made absolute."""
    from ensemble.config import single_application

    config = yaml.safe_load(Path(graph or DEFAULT_GRAPH).read_text())
    args = single_application(config).model_dump(mode="json", exclude_unset=True)
    args["model_root"] = absolute_root(args)
    return args


def graph_file(path: Path, model_root: str | None = None, **ensemble_args: dict[str, Any]) -> Path:
    """The YAML graph written to `path`: the ensemble's args blocks updated with `ensemble_args`
    (`ledger={"max_predictions": 1000}` keeps the rest of `ledger`), every application's models
    from `model_root` if given."""
    config = yaml.safe_load(DEFAULT_GRAPH.read_text())
    ensemble = next(app for app in config["applications"] if app["route_prefix"] == "/")
    for block, values in ensemble_args.items():
        ensemble["args"][block] = {**ensemble["args"].get(block, {}), **values}
    for app in config["applications"] if model_root else ():
        app["args"]["model_root"] = model_root
    path.write_text(yaml.safe_dump(config))
    return path


def absolute_root(args: dict[str, Any]) -> str:
    """An application's `model_root`, relative paths taken from the repository."""
    root = Path(args.get("model_root", "model_repo"))
    return str(root if root.is_absolute() else (REPO / root))


def state_url(tag: str) -> str:
    """A private SQLite file per run, so the benchmark never touches the project's state/."""
    directory = Path(os.environ.get("BENCH_STATE_DIR", "/tmp/ensemble-bench-state"))
    directory.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{directory / f'{tag}-{os.getpid()}.db'}"


def build(args: dict[str, Any], tag: str):
    """The project's application for `args`, its learned state in a private file."""
    from ensemble.config import GraphArgs
    from graphs.ensemble import build_app

    return build_app(GraphArgs.model_validate({**args, "state": {"url": state_url(tag)}}))


def alias_repo(root: str | Path, out: str | Path, aliases: dict[str, tuple[str, str]]) -> Path:
    """A model root holding every model of `root` plus `alias -> (model, version)` served as `alias/v1`.

    An alias links the artifacts (their SHA-256 still match) and rewrites only the manifest's
    name and version, so the repository's checks pass for a member the trainer never named.
    """
    root, out = Path(root), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for model in root.iterdir():
        link = out / model.name
        if model.is_dir() and not link.exists():
            link.symlink_to(model.resolve(), target_is_directory=True)
    for alias, (model, version) in aliases.items():
        source, target = root / model / version, out / alias / "v1"
        target.mkdir(parents=True, exist_ok=True)
        manifest = json.loads((source / "manifest.json").read_text())
        for name in manifest["artifacts"]:
            if not (target / name).exists():
                (target / name).symlink_to((source / name).resolve())
        (target / "manifest.json").write_text(json.dumps({**manifest, "name": alias, "version": "v1"}))
    return out


def _walk(value: Any, visit) -> Any:
    """`value` with every bound Application inside (dicts, lists, tuples) passed through `visit`."""
    from ray.serve import Application

    if isinstance(value, Application):
        return visit(value)
    if isinstance(value, dict):
        return {k: _walk(v, visit) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_walk(v, visit) for v in value)
    return value


def bound_deployments(app) -> dict[str, Any]:
    """Deployment name -> bound Application, for every deployment the ingress was bound with."""
    found: dict[str, Any] = {}

    def visit(child):
        found[child._bound_deployment.name] = child
        return child

    deployment = app._bound_deployment
    _walk((deployment.init_args, deployment.init_kwargs), visit)
    return found

