"""`make deploy GRAPH=...`: apply a Serve YAML to a running instance without dropping requests.

Unlike `serve deploy`, which returns once Serve has the config, this keeps the applications the
config drops until every application it names runs (ensemble.deploy_plan), then deletes them;
and it returns only then. If the config's applications do not all run within --timeout-s, or
one fails, it deploys again what ran before and exits 1.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import yaml
from ray.dashboard.modules.serve.sdk import ServeSubmissionClient
from ray.serve.schema import ServeDeploySchema

from ensemble.config import check_applications
from ensemble.deploy_plan import Progress, deployed_configs, previous_config, progress, statuses, surge_config


class DeployFailed(RuntimeError):
    """The config's applications did not all run; what ran before, if anything, was deployed again."""


class ServeApi(Protocol):
    """The two calls a deploy needs, from Serve's REST API or its controller."""

    def details(self) -> dict[str, Any]: ...

    def deploy(self, config: dict[str, Any]) -> None: ...


class DashboardApi:
    """Serve's REST API on the dashboard, as `serve deploy` uses it."""

    def __init__(self, address: str) -> None:
        self._client = ServeSubmissionClient(address)

    def details(self) -> dict[str, Any]:
        return self._client.get_serve_details()

    def deploy(self, config: dict[str, Any]) -> None:
        self._client.deploy_applications(config)


def read_config(path: Path) -> dict[str, Any]:
    """A Serve YAML, validated (the ensemble's and its members' args too) and dumped as `serve
    deploy` sends it. ValueError says what is wrong."""
    try:
        config = ServeDeploySchema.model_validate(yaml.safe_load(path.read_text())).model_dump(exclude_unset=True)
    except yaml.YAMLError as exc:
        raise ValueError(f"not YAML: {exc}") from exc
    check_applications(config)
    return config


def _wait(api: ServeApi, names: list[str], timeout_s: float, poll_s: float) -> Progress:
    deadline = time.monotonic() + timeout_s
    while (state := progress(statuses(api.details()), names)) == "waiting" and time.monotonic() < deadline:
        time.sleep(poll_s)
    return state


def deploy(api: ServeApi, target: dict[str, Any], timeout_s: float, poll_s: float = 1.0,
           say: Callable[[str], None] = print) -> None:
    """Apply target; keep the applications it drops until all of its applications run."""
    deployed = deployed_configs(api.details())
    surge = surge_config(target, deployed)
    names = [app["name"] for app in target["applications"]]
    if surge is not None:
        kept = [app["name"] for app in surge["applications"] if app["name"] not in names]
        say(f"keeping {', '.join(kept)} until {', '.join(names)} run")
    api.deploy(surge or target)
    state = _wait(api, names, timeout_s, poll_s)
    if state != "running":
        why = "failed" if state == "failed" else f"not running after {timeout_s:.0f} s"
        current = statuses(api.details())
        detail = ", ".join(f"{name}: {current.get(name, 'missing')}" for name in names)
        if deployed:
            api.deploy(previous_config(target, deployed))
            raise DeployFailed(f"{why} ({detail}); deployed the previous applications again: {', '.join(deployed)}")
        raise DeployFailed(f"{why} ({detail})")
    if surge is not None:
        api.deploy(target)
    say(f"running: {', '.join(names)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path, help="Serve YAML, e.g. graphs/canary.yaml")
    parser.add_argument("--address", default=os.environ.get("RAY_DASHBOARD_ADDRESS", "http://localhost:8265"),
                        help="Ray dashboard address, as for `serve deploy`")
    parser.add_argument("--timeout-s", type=float, default=600.0,
                        help="seconds the config's applications may take to run before the deploy is undone")
    parser.add_argument("--check", action="store_true", help="only validate the config (make serve does, first)")
    args = parser.parse_args(argv)
    try:
        target = read_config(args.config)
    except ValueError as invalid:  # pydantic's ValidationError too
        print(f"{args.config} refused, nothing deployed: {invalid}", file=sys.stderr)
        return 2
    if args.check:
        return 0
    try:
        deploy(DashboardApi(args.address), target, args.timeout_s)
    except DeployFailed as failed:
        print(f"deploy of {args.config} undone: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
