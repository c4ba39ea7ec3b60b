"""Deploying a Serve config onto a running graph without dropping requests.

Serve applies a config declaratively: the applications it no longer names are deleted at once,
while the router replica that still calls them serves until its replacement is ready. Swapping
every member version by one `serve deploy` (graphs/ensemble-v2.yaml onto graphs/ensemble.yaml)
therefore leaves the old router without members for as long as the new one takes to start
(BENCHMARKS.md, "Deploying under load"). So a deploy first applies the target with the
applications it drops kept (a surge, at the level of applications), waits until every
application of the target runs, and only then applies the target itself: by then no router
calls the applications it deletes. No Ray here; `graphs/deploy.py` drives it.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

RUNNING = "RUNNING"
# Serve's application statuses after which waiting longer does not help.
FAILED = frozenset({"DEPLOY_FAILED", "UNHEALTHY"})
DEFAULT_ROUTE_PREFIX = "/"  # Serve's, for an application config that names none
Progress = Literal["waiting", "running", "failed"]


def deployed_configs(details: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The applications deployed from a config (not by `serve.run`), each with its config, by
    name, from Serve's instance details (`GET /api/serve/applications/`)."""
    return {name: app["deployed_app_config"] for name, app in details.get("applications", {}).items()
            if app.get("deployed_app_config")}


def statuses(details: Mapping[str, Any]) -> dict[str, str]:
    """Each application's status, by name, from Serve's instance details."""
    return {name: app["status"] for name, app in details.get("applications", {}).items()}


def surge_config(target: Mapping[str, Any], deployed: Mapping[str, Mapping[str, Any]]) -> dict[str, Any] | None:
    """The target config with the deployed applications it drops kept, or None when it drops none.

    A dropped application whose route prefix the target gives to another is not kept: Serve
    refuses two applications on one prefix. An application without `route_prefix` has Serve's
    default, "/"; one with `route_prefix: null` has no route.
    """
    apps = target["applications"]
    names = {app["name"] for app in apps}
    prefixes = {_route_prefix(app) for app in apps} - {None}
    kept = [dict(config) for name, config in deployed.items()
            if name not in names and _route_prefix(config) not in prefixes]
    return {**target, "applications": [*apps, *kept]} if kept else None


def _route_prefix(app: Mapping[str, Any]) -> str | None:
    return app.get("route_prefix", DEFAULT_ROUTE_PREFIX)


def previous_config(target: Mapping[str, Any], deployed: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """What a failed deploy goes back to: the applications deployed before it, under the
    target's instance-wide options."""
    return {**target, "applications": [dict(config) for config in deployed.values()]}


def progress(current: Mapping[str, str], names: Iterable[str]) -> Progress:
    """Whether the named applications all run, one has failed, or some are still deploying."""
    names = list(names)
    if any(current.get(name) in FAILED for name in names):
        return "failed"
    return "waiting" if still_deploying(current, names) else "running"


def still_deploying(current: Mapping[str, str], names: Iterable[str]) -> list[str]:
    """The named applications still deploying: neither running nor failed (missing counts as
    deploying, since Serve creates an application's status only when it applies the config)."""
    return [name for name in names if current.get(name) != RUNNING and current.get(name) not in FAILED]
