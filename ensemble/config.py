"""Typed configuration of an ensemble graph: the arguments of `graphs.ensemble:build_app`.

Plain pydantic, no Ray: the Serve YAML's `args` validate against `GraphArgs` in tests and at
deploy time, and unknown keys are rejected everywhere so a typo never passes silently.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, model_validator

from ensemble.ledger import LedgerSpec
from ensemble.rollout import RolloutPlan
from ensemble.strict import StrictModel
from ensemble.traffic import check_shadow, check_split
from ensemble.trust import TrustSpec

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$")
VERSION_PATTERN = re.compile(r"^v[0-9]+[a-z0-9_]*$")
AUTOSCALING_POLICY = "deployments.autoscaling:MemberLoadPolicy"


class AutoscalingSpec(StrictModel):
    """Queue-based autoscaling of one deployment (Ray Serve's `autoscaling_config`)."""

    min_replicas: int = Field(1, ge=0, description="Fewest replicas kept running.")
    max_replicas: int = Field(1, ge=1, description="Most replicas the autoscaler may start.")
    initial_replicas: int | None = Field(None, ge=0, description="Replicas started on deploy; min_replicas when unset.")
    target_ongoing_requests: float = Field(
        2.0, gt=0, description="Ongoing requests per replica the autoscaler aims for."
    )
    target_cpu_fraction: float = Field(
        0.8, gt=0, le=1,
        description="Share of its framework threads' time a member replica may spend on the CPU before the "
        "autoscaler adds one (replicas that report none, the router's, scale on ongoing requests only).",
    )
    upscale_delay_s: float = Field(5.0, ge=0, description="Seconds a scale-up decision must hold before it acts.")
    downscale_delay_s: float = Field(30.0, ge=0, description="Seconds a scale-down decision must hold before it acts.")

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must not exceed max_replicas")
        if self.initial_replicas is not None and not (
            self.min_replicas <= self.initial_replicas <= self.max_replicas
        ):
            raise ValueError("initial_replicas must lie between min_replicas and max_replicas")
        return self

    def to_serve(self) -> dict[str, Any]:
        """The dict Ray Serve's `autoscaling_config` takes, with the policy that also counts
        calls over member replicas' direct channels and their CPU (`deployments.autoscaling`)."""
        serve_fields = self.model_dump(exclude_none=True, exclude={"target_cpu_fraction"})
        policy = {"policy_function": AUTOSCALING_POLICY, "policy_kwargs": {"target_cpu_fraction": self.target_cpu_fraction}}
        return {**serve_fields, "policy": policy}


class ReplicaSpec(StrictModel):
    """Resources and scaling of one deployment."""

    num_cpus: float = Field(0.25, gt=0, description="CPUs each replica asks for; fractions pack replicas densely.")
    num_gpus: float = Field(
        0.0, ge=0, description="GPUs each replica asks for; with > 0 and CUDA present the nets run on the GPU."
    )
    num_replicas: int = Field(1, ge=1, description="Fixed replica count, used when `autoscaling` is unset.")
    autoscaling: AutoscalingSpec | None = Field(None, description="Autoscaling; replaces `num_replicas` when set.")
    max_ongoing_requests: int = Field(64, ge=1, description="Requests a replica accepts at once before queueing.")
    max_surge_percent: int = Field(
        100, ge=0, le=100,
        description="Replicas a rolling update may start beyond the replica count before it stops old ones, in percent "
        "of that count: at 100 old replicas serve until their replacements are ready; at 0 (Ray's default) a "
        "one-replica deployment stops serving until its replacement starts.",
    )

    @property
    def framework_threads(self) -> int:
        """Framework threads for a replica: one per whole CPU it asks for, at least one."""
        return max(1, int(self.num_cpus))


class MemberVersionSpec(ReplicaSpec):
    """One deployed version of a member: a deployment named `<model>-<version>`."""

    max_batch_rows: int = Field(
        256, ge=1, description="Most window rows one model call carries: concurrent calls are merged up to it, "
        "and a larger call is split."
    )


class MemberAppArgs(MemberVersionSpec):
    """Arguments of `graphs.ensemble:build_member`: one member version as its own Serve application."""

    model_root: str = Field("model_repo", description="Model repository root, relative to the working directory.")
    model: str = Field(description="Model name in the repository, e.g. patchtst.")
    version: str = Field(description="Version in the repository, e.g. v2.")


class MemberSpec(StrictModel):
    """One ensemble member: a model served at one or more versions."""

    versions: dict[str, MemberVersionSpec] = Field(
        description="Deployed versions of this model (names as in the model repository), each its own deployment.",
        min_length=1,
    )
    prior: float = Field(1.0, gt=0, description="Prior trust weight; normalised over the members that answer.")
    traffic: dict[str, float] | None = Field(
        None,
        description="Share of this member's traffic per version; shares sum to 1. Unset: all to the first version.",
    )
    shadow: dict[str, float] = Field(
        default_factory=dict,
        description="Share (0 to 1) of this member's requests mirrored to each listed version: logged and scored "
        "by feedback, never returned, never waited for.",
    )
    rollout: RolloutPlan | None = Field(
        None, description="A canary rollout to run from the version holding most traffic to `rollout.canary`."
    )

    @model_validator(mode="after")
    def _versions_and_traffic(self) -> MemberSpec:
        for version in self.versions:
            if not VERSION_PATTERN.match(version):
                raise ValueError(f"version {version!r} must look like v1, v2, v3b")
        if self.traffic is not None:
            check_split(self.traffic, self.versions)
        check_shadow(self.shadow, self.versions)
        if self.rollout is not None:
            split = self.split()
            if self.rollout.canary not in self.versions:
                raise ValueError(f"rollout.canary {self.rollout.canary!r} is not among the versions")
            if not any(share > 0 for v, share in split.items() if v != self.rollout.canary):
                raise ValueError("a rollout needs a stable version other than the canary holding traffic")
        return self

    def split(self) -> dict[str, float]:
        """The traffic split in force: the configured one, else everything to the first version."""
        return dict(self.traffic) if self.traffic is not None else {next(iter(self.versions)): 1.0}


def deployment_name(model: str, version: str) -> str:
    """Serve deployment name of one (model, version), e.g. `patchtst-v2`."""
    return f"{model}-{version}"


def member_route(model: str, version: str) -> str:
    """HTTP route prefix of a member version's application when the router calls it over HTTP."""
    return f"/members/{deployment_name(model, version)}"


class RouterSpec(ReplicaSpec):
    """The HTTP ingress that fans requests out and combines the answers."""

    num_cpus: float = Field(0.5, gt=0, description="CPUs each router replica asks for.")
    max_ongoing_requests: int = Field(256, ge=1, description="Requests a router replica accepts at once.")
    deadline_s: float = Field(
        1.0, gt=0, le=60, description="Seconds from a request's arrival at the router until it is answered with the members "
        "that have answered; later members are left out (degraded)."
    )
    member_timeout_s: float = Field(
        5.0, gt=0, le=600,
        description="When no member answered by deadline_s, seconds the request may wait for the first answer "
        "(degraded) before 503; member calls still running then are abandoned.",
    )
    member_wait_s: float = Field(
        120.0, ge=0, le=3600,
        description="With member_apps, seconds a starting router replica waits for its member applications to run "
        "before it reports ready; a member application that failed is not waited for. A deploy's old router serves "
        "until then, so a deploy that changes member versions does not leave requests to a router whose members are "
        "still starting. After the wait the router serves with the members that run (degraded).",
    )
    control_wait_s: float = Field(
        60.0, ge=0, le=3600,
        description="Seconds a starting router replica waits for the control plane's first answer (the learned "
        "weights and the traffic in force) before it reports ready. After the wait it serves with the priors and "
        "the config's traffic until the control plane answers.",
    )
    max_rows: int = Field(1024, ge=1, description="Most rows accepted in one window (longer ones are rejected).")
    max_instances: int = Field(256, ge=1, description="Most windows accepted in one batch request.")
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="Largest request body accepted, in bytes.")
    max_in_flight: int = Field(
        1, ge=1,
        description="Model calls in flight at once from a router replica to each replica of a member version "
        "(those it knows over the direct channel; one replica otherwise); requests arriving meanwhile are merged "
        "into the next call. One makes the largest calls (measured best on two cores).",
    )
    gc_threshold: int = Field(
        20_000, ge=1,
        description="Python's first-generation garbage-collection threshold in a router replica (Python's default "
        "is 700). Each request briefly holds a few hundred containers (the parsed window's "
        "rows, its futures), so at 700 the collector runs every few requests and walks every request in flight, "
        "and promotes them to the older generations, whose collections pause longer. Reference counting frees almost "
        "all of them anyway.",
    )
    member_url: str | None = Field(
        None, pattern=r"^https?://[^/]+$",
        description="Base URL of Serve's HTTP ingress as seen from a router replica (e.g. http://127.0.0.1:8000): "
        "where member versions are reached over HTTP, at <member_url>/members/<model>-<version> (needs member_apps, "
        "each member application with that route_prefix), with raw float32 bodies.",
    )
    member_transport: Literal["auto", "http", "handle"] = Field(
        "auto",
        description="How the router calls member versions: http (needs member_url), handle (Serve handles), or "
        "auto: http when member_url is set and Serve runs its HAProxy ingress (RAY_SERVE_ENABLE_HA_PROXY), where a "
        "call costs the router a third of a handle call's CPU; through Ray's Python proxy a handle is cheaper.",
    )

    direct_channel: bool = Field(
        True,
        description="Send member calls over the replicas' direct channels (framed float32 over TCP to the replicas "
        "Serve's request router names), which cost the router and the replica a fraction of an HTTP call's CPU; "
        "member_transport is then the path when no replica has a reachable channel.",
    )

    def calls_over_http(self, environ: Mapping[str, str]) -> bool:
        """Whether member calls go over HTTP, given the replica's environment."""
        if self.member_transport == "auto":
            haproxy = environ.get("RAY_SERVE_ENABLE_HA_PROXY", "0").lower() in ("1", "true")
            return self.member_url is not None and haproxy
        return self.member_transport == "http"

    @model_validator(mode="after")
    def _transport(self) -> RouterSpec:
        if self.member_transport == "http" and self.member_url is None:
            raise ValueError("member_transport http needs member_url")
        return self

    max_shadow_rows: int = Field(
        1024, ge=1, description="Mirrored rows queued or in flight per shadow version; beyond it they are dropped and counted."
    )
    log_flush_s: float = Field(
        0.25, gt=0, le=60,
        description="Seconds between shipments of a router replica's predictions, call statistics and metrics to "
        "the control plane: each costs the router a handle call and the control plane a commit. Feedback ships its "
        "own router replica's predictions first, so a label sent right after its prediction still joins; a replica "
        "that stops ships what it holds.",
    )


class StateSpec(StrictModel):
    """The store of everything that must survive a restart."""

    url: str = Field(
        "sqlite:///state/ensemble.db",
        description="SQLAlchemy URL: an embedded SQLite file (relative to the working directory) or postgresql://…",
    )


class GraphArgs(StrictModel):
    """Arguments of the ensemble application builder (the `args:` of a Serve YAML application)."""

    model_root: str = Field("model_repo", description="Model repository root, relative to the working directory.")
    members: dict[str, MemberSpec] = Field(description="Members by model name, as in the model repository.")
    router: RouterSpec = Field(default_factory=RouterSpec, description="The ingress router deployment.")
    combine: Literal["weighted_mean"] = Field("weighted_mean", description="How member answers are combined.")
    trust: TrustSpec = Field(default_factory=TrustSpec, description="How trust is learned from feedback.")
    ledger: LedgerSpec = Field(default_factory=LedgerSpec, description="Prediction log and feedback join.")
    state: StateSpec = Field(default_factory=lambda: StateSpec(), description="Where learned state persists.")
    member_apps: bool = Field(
        False,
        description="Each member version runs as its own Serve application named `<model>-<version>` (built by "
        "graphs.ensemble:build_member, where its resources are set), so deploying a config that adds or "
        "changes one version leaves the other members' replicas running.",
    )

    @model_validator(mode="after")
    def _names(self) -> GraphArgs:
        if not self.members:
            raise ValueError("members must name at least one model")
        for name, spec in self.members.items():
            if not NAME_PATTERN.match(name):
                raise ValueError(f"member name {name!r} must be lower-case letters, digits and _")
            for version, vspec in spec.versions.items():
                if self.member_apps and vspec != MemberVersionSpec():
                    raise ValueError(f"members.{name}.versions.{version}: with member_apps, leave it {{}} and set its "
                                     f"resources in the application {deployment_name(name, version)}")
        if self.router.member_url and not self.member_apps:
            raise ValueError("router.member_url needs member_apps: only a member application has an HTTP route")
        return self


ENSEMBLE_IMPORT_PATH = "graphs.ensemble:build_app"
MEMBER_IMPORT_PATH = "graphs.ensemble:build_member"


def single_application(config: Mapping[str, Any]) -> GraphArgs:
    """The ensemble of a Serve config (`applications: [...]`) as one application.

    With member applications, their settings are folded into the ensemble's members; a member
    version without its application, or a member application no ensemble uses, is an error.
    """
    apps = config["applications"]
    ensembles = [app for app in apps if app["import_path"] == ENSEMBLE_IMPORT_PATH]
    if len(ensembles) != 1:
        raise ValueError(f"expected one application built by {ENSEMBLE_IMPORT_PATH}, found {len(ensembles)}")
    args = GraphArgs.model_validate(ensembles[0].get("args", {}))
    if not args.member_apps:
        return args
    member_apps = {app["name"]: MemberAppArgs.model_validate(app.get("args", {}))
                   for app in apps if app["import_path"] == MEMBER_IMPORT_PATH}
    routes = {app["name"]: app.get("route_prefix") for app in apps}
    folded = args.model_dump(exclude_unset=True)
    folded["member_apps"] = False
    for key in ("member_url", "member_transport"):  # one application: members are reached by handles
        folded.get("router", {}).pop(key, None)
    for model, spec in args.members.items():
        for version in spec.versions:
            name = deployment_name(model, version)
            member = member_apps.pop(name, None)
            if member is None or (member.model, member.version) != (model, version):
                raise ValueError(f"member version {name} needs an application {name} built by {MEMBER_IMPORT_PATH} "
                                 f"with model {model!r} and version {version!r}")
            if member.model_root != args.model_root:
                # The router reads the input contract and the drift baselines from the ensemble's.
                raise ValueError(f"application {name}: model_root {member.model_root!r} differs from the "
                                 f"ensemble's {args.model_root!r}")
            if args.router.member_url and routes[name] != member_route(model, version):
                raise ValueError(f"application {name}: router.member_url needs route_prefix "
                                 f"{member_route(model, version)}, found {routes[name]!r}")
            folded["members"][model]["versions"][version] = member.model_dump(
                exclude_unset=True, exclude={"model_root", "model", "version"})
    if member_apps:
        raise ValueError(f"member applications no ensemble member uses: {sorted(member_apps)}")
    return GraphArgs.model_validate(folded)


def check_applications(config: Mapping[str, Any]) -> None:
    """Raise ValueError naming what is wrong where a Serve config's ensemble or member
    applications would fail to build, or disagree: Serve would only report them failed."""
    apps = config["applications"]
    if sum(app["import_path"] == ENSEMBLE_IMPORT_PATH for app in apps) == 1:
        single_application(config)
        return
    for app in apps:  # several ensembles (or none): each application's args alone
        builder_args = {ENSEMBLE_IMPORT_PATH: GraphArgs, MEMBER_IMPORT_PATH: MemberAppArgs}.get(app["import_path"])
        if builder_args is not None:
            builder_args.model_validate(app.get("args", {}))
