"""The ensemble router: HTTP ingress that fans out to the members and combines their answers.

Thin by design: parsing is `ensemble.validation`, fan-out and combining `ensemble.fanout`;
this class wires them to Serve handles, FastAPI routes and Ray metrics. (No postponed
annotations here: FastAPI must see the real `Request` type on the routes Serve rebuilds.)
"""

import asyncio
import gc
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any, Literal

import aiohttp
import numpy as np
import orjson
import ray
from fastapi import FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.exceptions import RayTaskError
from ray.serve.handle import DeploymentHandle
from ray.util import metrics
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from ensemble.admin import admin_token, authorise
from ensemble.batching import ModelCall
from ensemble.channel import DirectMember, Endpoint
from ensemble.config import GraphArgs, deployment_name, member_route
from ensemble.deploy_plan import still_deploying
from ensemble.fanout import CallOutcome, EnsemblePredictor, ShadowOutcome
from ensemble.ledger import PredictionRow
from ensemble.load import InFlight
from ensemble.rollout import CallStats
from ensemble.schemas import BatchPrediction, ErrorBody, FeedbackRequest, Prediction, PredictRequest, RolloutStart
from ensemble.store import StateStoreError
from ensemble.traffic_control import TrafficChange
from ensemble.validation import Limits, RequestError, parse_feedback, parse_model, parse_predict
from deployments.autoscaling import UNSEEN_IN_FLIGHT
from deployments.heap import freeze_loaded
from deployments.http_callback import (ClientLeft, answer_asgi, answer_predict_here, over_the_limit, predict_routed_here,
                                      read_body)
from deployments.member_http import HttpMember
from deployments.openapi import json_body

logger = logging.getLogger("ray.serve")
LOG_BUFFER_ROWS = 100_000  # beyond this (control plane down) the oldest unsent rows are dropped
POLL_WAIT_S = 5.0
# Bounds a stopping replica's last shipment. A deploy that changes the ensemble application's
# arguments restarts its control plane beside the routers (Serve versions every deployment of an
# application by its arguments), and the shipment waits for the new one: 2 s after the old one
# stopped, in a test run on two cores. With the whole application stopping it waits in vain.
FINAL_FLUSH_S = 10.0
MEMBER_POLL_S = 0.5  # how often a starting router asks Serve whether its member applications run
INFO_WAIT_S = 2.0  # how long readyz and /v1/members wait for a member version's info
RETRY_PAUSE_S = 0.5  # between a starting or stopping router's tries to reach the control plane

ERRORS = {status: {"model": ErrorBody} for status in (400, 413, 422, 503)}
ADMIN_ERRORS = {status: {"model": ErrorBody} for status in (400, 401, 403, 409, 422, 503)}


def json_response(content: Any, status_code: int = 200) -> Response:
    return Response(orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY), status_code, media_type="application/json")


class PredictFastPath:
    """Answers POST /v1/predict ahead of FastAPI's middleware, routing and dependency layers,
    where Serve's wrapper runs (no `PredictAhead` in this process: Serve's HTTP-server callback
    unset, or Ray's own proxy in front).

    Those layers (error and body-limit middleware, routing, dependency solving, the exit stack)
    run per request for a route that reads bytes and writes bytes anyway, and validates its own
    body size; skipping them, with RouterMetrics' batching, took the router from 2.9 to 2.5 CPU
    ms per request under load. Every other route keeps them.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "").removeprefix(scope.get("root_path", ""))
        if scope["type"] != "http" or scope["method"] != "POST" or path != "/v1/predict":
            await self.app(scope, receive, send)
            return
        router: EnsembleRouter = serve.get_replica_context().servable_object
        predict_routed_here(scope["path"])  # Serve checked the route prefix: `PredictAhead` may take it
        await answer_asgi(router.answer_predict, router.limits.max_body_bytes, scope, receive, send)


class EnsembleApp(FastAPI):
    """FastAPI with `PredictFastPath` outside its whole middleware stack."""

    def build_middleware_stack(self) -> ASGIApp:
        return PredictFastPath(super().build_middleware_stack())


app = EnsembleApp(
    title="Ensemble model server",
    version="1",
    description="A trust-weighted ensemble of forecasting models, each its own Ray Serve deployment.",
)


@app.exception_handler(RequestError)
async def _request_error(_: Request, exc: RequestError) -> Response:
    return JSONResponse({"detail": exc.message}, status_code=exc.status)


@app.exception_handler(RequestValidationError)
async def _invalid_parameter(_: Request, exc: RequestValidationError) -> Response:
    """FastAPI's own checks (path parameters such as a rollout's action) answer like ours: one
    `detail` that names the field, not FastAPI's list."""
    error = exc.errors()[0]
    field = ".".join(str(part) for part in error["loc"][1:]) or str(error["loc"][0])
    return JSONResponse({"detail": f"{field}: {error['msg']}"}, status_code=422)


@app.exception_handler(StateStoreError)
async def _store_failed(_: Request, exc: StateStoreError) -> Response:
    """A read of the control plane's that needed the state store, which failed (a database out of
    reach): 503, as for feedback, not a 500. Ray raises it as the control plane's StateStoreError."""
    return JSONResponse({"detail": f"{getattr(exc, 'cause', exc)}; try again"}, status_code=503)


@app.exception_handler(ClientDisconnect)
async def _client_left(_: Request, __: ClientDisconnect) -> Response:
    """A client that left mid-body (feedback, admin): 499, as Serve counts a disconnect it sees
    itself, rather than a 500 with a traceback. Reading the body takes the disconnect message
    before Serve's own watch for it can."""
    return Response(status_code=499)


# Seconds, for the predict answers' and the member calls' latency histograms.
LATENCY_BOUNDARIES_S = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5]


class RouterMetrics:
    """Predict answers by status and their latency, and per-member request counts, latencies and
    errors, as Ray metrics (Prometheus endpoint).

    Counters are added once per log flush from the router's call statistics, a member call's
    latency is observed once per model call (which carries many requests' rows under load) and an
    answer's once per request, untagged (1–2 µs, where tags cost as much again): a tagged metric
    update per request and member cost the router about 7% of its CPU.
    """

    def __init__(self) -> None:
        tags = ("model", "version")
        self.requests = metrics.Counter(
            "ensemble_member_requests", "Requests routed to a member version (a lagging one is sent one per call).", tags
        )
        self.errors = metrics.Counter(
            "ensemble_member_errors", "Member requests that failed or timed out.", (*tags, "status")
        )
        self.call_latency = metrics.Histogram(
            "ensemble_member_call_latency_s",
            "Seconds of one batched call to a member version, from sending it to its answer.",
            boundaries=LATENCY_BOUNDARIES_S,
            tag_keys=tags,
        )
        self.degraded = metrics.Counter("ensemble_degraded_answers", "Answers that left a member out.")
        self.shadow = metrics.Counter(
            "ensemble_shadow_requests", "Rows mirrored to a shadow version, by outcome (ok, error, timeout, dropped).",
            (*tags, "status"),
        )
        # Serve counts the requests through its own wrapper; those PredictAhead answers it never sees.
        self.answers = metrics.Counter("ensemble_predict_answers", "Predict requests answered, by HTTP status.",
                                       ("status",))
        self.answer_latency = metrics.Histogram(
            "ensemble_predict_latency_s",
            "Seconds from a predict request's arrival at the router to its answer, whatever its status.",
            boundaries=LATENCY_BOUNDARIES_S,
        )
        self._counts: dict[tuple[str, str, str], int] = {}
        self._degraded = 0
        self._statuses: dict[int, int] = {}

    def count(self, status: int, arrived: float, outcomes: Sequence[CallOutcome] = (), degraded: int = 0) -> None:
        """One predict that arrived at `arrived` (`time.perf_counter()`) answered now with
        `status`, and how its member calls did."""
        self.answer_latency.observe(time.perf_counter() - arrived)
        self._statuses[status] = self._statuses.get(status, 0) + 1
        for outcome in outcomes:
            key = (outcome.model, outcome.version, outcome.status)
            self._counts[key] = self._counts.get(key, 0) + outcome.rows
        self._degraded += degraded

    def publish(self) -> None:
        counts, self._counts = self._counts, {}
        for (model, version, status), rows in counts.items():
            tags = {"model": model, "version": version}
            self.requests.inc(rows, tags)
            if status != "ok":
                self.errors.inc(rows, {**tags, "status": status})
        if self._degraded:
            self.degraded.inc(self._degraded)
            self._degraded = 0
        statuses, self._statuses = self._statuses, {}
        for status, answers in statuses.items():
            self.answers.inc(answers, {"status": str(status)})

    def timed(self, model: str, version: str, call: ModelCall) -> ModelCall:
        """`call`, observing how long each answer takes."""
        tags = {"model": model, "version": version}

        async def timed_call(windows: np.ndarray) -> np.ndarray:
            started = time.perf_counter()
            outputs = await call(windows)
            self.call_latency.observe(time.perf_counter() - started, tags)
            return outputs

        return timed_call


async def retried(attempt: Callable[[], Awaitable[bool]], wait_s: float) -> bool:
    """Run `attempt` until it returns True, RETRY_PAUSE_S apart, for at most `wait_s`; whether it did."""
    try:
        async with asyncio.timeout(wait_s):
            while not await attempt():
                await asyncio.sleep(RETRY_PAUSE_S)
    except TimeoutError:
        return False
    return True


async def wait_for_member_apps(names: list[str], wait_s: float) -> None:
    """Return once every named application runs or has failed, or after wait_s.

    Serve counts a replica ready when its constructor returns, and a deploy stops the old router
    then: a router that came up before its members would answer 503 where the old one answered.
    """
    deadline = time.monotonic() + wait_s
    while True:
        overview = await asyncio.to_thread(serve.status)
        pending = still_deploying({name: app.status.value for name, app in overview.applications.items()}, names)
        if not pending:
            return
        if time.monotonic() >= deadline:
            logger.warning("member applications still deploying after %.0f s; serving without them until they run: %s",
                           wait_s, ", ".join(pending))
            return
        await asyncio.sleep(MEMBER_POLL_S)


async def chosen_channel(handle: DeploymentHandle, node_id: str | None) -> Endpoint | None:
    """The direct channel of the replica Serve's request router chooses now (`DirectMember` asks
    this to learn the replicas, not per call), and whether it runs on the caller's node `node_id`.

    Pick-only (`_reserve=False`, as Serve's own HAProxy ingress picks): reserving a slot costs
    two actor calls per choice.
    """
    async with handle.choose_replica(_reserve=False) as selection:
        metadata = selection.replica_metadata
    channel = metadata.get("channel")
    if not channel:
        return None
    return Endpoint(channel[0], channel[1], same_node=node_id is not None and metadata.get("node_id") == node_id)


@serve.deployment
@serve.ingress(app)
class EnsembleRouter:
    async def __init__(self, args: dict[str, Any], members: dict[str, dict[str, DeploymentHandle | str]],
                       contract: dict[str, Any], control: DeploymentHandle) -> None:
        self.args = GraphArgs.model_validate(args)
        self.control = control
        router = self.args.router
        # A name instead of a handle: that version is its own application (GraphArgs.member_apps),
        # which may still be deploying; /readyz says so until it answers.
        handles = {
            model: {version: member if isinstance(member, DeploymentHandle)
                    else serve.get_deployment_handle(member, app_name=member, _check_exists=False)
                    for version, member in versions.items()}
            for model, versions in members.items()
        }
        if router.calls_over_http(os.environ):
            # No overall timeout here: the batcher bounds every call with member_timeout_s.
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
            http = {model: {version: HttpMember(self._session, f"{router.member_url}{member_route(model, version)}")
                            for version in versions} for model, versions in members.items()}
            self._predict = {m: {v: member.predict for v, member in vs.items()} for m, vs in http.items()}
            self._info = {m: {v: member.info for v, member in vs.items()} for m, vs in http.items()}
        else:
            self._session = None
            self._predict = {m: {v: handle.predict.remote for v, handle in vs.items()} for m, vs in handles.items()}
            self._info = {m: {v: handle.info.remote for v, handle in vs.items()} for m, vs in handles.items()}
        self._direct: list[DirectMember] = []
        replicas: dict[tuple[str, str], Callable[[], int]] = {}
        if router.direct_channel:
            node_id = ray.get_runtime_context().get_node_id()
            for model, versions in handles.items():
                for version, handle in versions.items():
                    direct = DirectMember(partial(chosen_channel, handle, node_id),
                                          fallback=self._predict[model][version])
                    self._direct.append(direct)
                    self._predict[model][version] = direct.predict
                    replicas[(model, version)] = direct.replicas
        self.limits = Limits(contract["window"], contract["n_features"], router.max_rows,
                             router.max_instances, router.max_body_bytes, tuple(contract["features"]))
        # The priors and the config's traffic, until the control plane's first answer (awaited below).
        self.weights = {
            deployment_name(model, version): spec.prior
            for model, spec in self.args.members.items()
            for version in spec.versions
        }
        traffic = {model: {"split": spec.split(), "shadow": dict(spec.shadow)}
                        for model, spec in self.args.members.items()}
        self.metrics = RouterMetrics()
        self.predictor = EnsemblePredictor(
            calls={model: {version: self.metrics.timed(model, version, call) for version, call in versions.items()}
                   for model, versions in self._predict.items()},
            traffic=traffic,
            weights=lambda: self.weights,
            deadline_s=router.deadline_s,
            member_timeout_s=router.member_timeout_s,
            max_rows=min(v.max_batch_rows for spec in self.args.members.values() for v in spec.versions.values()),
            max_in_flight=router.max_in_flight,
            on_shadow=self._shadow_done,
            max_shadow_rows=router.max_shadow_rows,
            replicas=replicas,
        )
        self.admin_token = admin_token(os.environ)
        gc.set_threshold(router.gc_threshold, *gc.get_threshold()[1:])
        self.dropped_log_rows = metrics.Counter(
            "ensemble_prediction_log_dropped",
            "Predictions dropped before reaching the log (control plane down too long, or it refused them).",
        )
        self._log_rows: list[PredictionRow] = []
        self._shadow_rows: list[PredictionRow] = []
        self._calls = CallStats()
        # One shipment at a time, so that a flush awaited by feedback or by __del__ returns only
        # once every row taken before it has reached the control plane.
        self._shipping = asyncio.Lock()
        self._epoch, self._applied = -1, self.predictor.traffic()
        self._ahead = InFlight()
        self._ongoing = asyncio.Semaphore(router.max_ongoing_requests)
        freeze_loaded()
        loop = asyncio.get_running_loop()
        answer_predict_here(self.answer_ahead, self.limits.max_body_bytes, loop)
        # Ready only with what the control plane serves: a replica started beside a restarting
        # control plane (or replacing one that died) would otherwise answer its first requests
        # with the priors and the config's split, after a promotion the old version.
        starting = [self._first_snapshot(router.control_wait_s)]
        if self.args.member_apps:
            starting.append(wait_for_member_apps([deployment_name(model, version) for model, versions in members.items()
                                                  for version in versions], router.member_wait_s))
        await asyncio.gather(*starting)
        self._tasks = [loop.create_task(self._follow_control()), loop.create_task(self._ship_log())]

    async def __del__(self) -> None:
        # Serve awaits this when the replica stops (scale-down, redeploy, shutdown), after its
        # requests have drained: ship the predictions not yet shipped, so that their labels still
        # join, then close the member connections cleanly.
        if hasattr(self, "_shipping"):  # absent if __init__ failed early
            if not await retried(self._flushed, FINAL_FLUSH_S):
                logger.warning("control plane unreachable while stopping: %d predictions not yet shipped are not "
                               "logged", len(self._log_rows))
                if self._log_rows:
                    self.dropped_log_rows.inc(len(self._log_rows))
        for direct in getattr(self, "_direct", ()):  # absent if __init__ failed early
            direct.close()
        session = getattr(self, "_session", None)
        if session is not None:
            await session.close()

    async def _first_snapshot(self, wait_s: float) -> None:
        if not await retried(self._snapshot_taken, wait_s):
            logger.warning("no answer from the control plane within %.0f s; serving with the priors and the "
                           "config's traffic until it answers", wait_s)

    async def _snapshot_taken(self) -> bool:
        try:
            await self._poll_control(0.0)
        except Exception:  # noqa: BLE001 - a control plane starting or being replaced: try again
            logger.info("the control plane did not answer; trying again", exc_info=True)
            return False
        return True

    async def _flushed(self) -> bool:
        await self._flush_log()
        return not self._log_rows and not self._shadow_rows

    async def _follow_control(self) -> None:
        """Long-poll the control plane so a change reaches this replica as soon as it happens."""
        while True:
            try:
                await self._poll_control(POLL_WAIT_S)
            except Exception:  # noqa: BLE001 - keep serving with the last weights; retry
                logger.warning("control plane unreachable; serving with the last weights and traffic", exc_info=True)
                await asyncio.sleep(0.5)

    async def _poll_control(self, wait_s: float) -> None:
        """Apply the control plane's weights and traffic once they are newer than this replica's."""
        snapshot = await self.control.snapshot.remote(self._epoch, wait_s)
        self._epoch, self.weights = snapshot["epoch"], snapshot["weights"]
        if snapshot["traffic"] != self._applied:
            kept = self.predictor.set_traffic(snapshot["traffic"])
            if kept:
                logger.warning("traffic for versions this replica does not call (a deploy replacing them); "
                               "keeping the current split of %s", ", ".join(kept))
            self._applied = snapshot["traffic"]

    async def _ship_log(self) -> None:
        while True:
            await asyncio.sleep(self.args.router.log_flush_s)
            try:
                await self._flush_log()
            except Exception:  # noqa: BLE001 - no one shipment's error may stop the shipping for good
                logger.exception("shipping the prediction log failed")

    async def _flush_log(self) -> None:
        async with self._shipping:
            # A caller that goes away (a feedback client disconnecting) must not take with it the
            # rows being shipped: they left the buffer when the shipment began.
            await asyncio.shield(self._ship())

    async def _ship(self) -> None:
        self.metrics.publish()
        rows, self._log_rows = self._log_rows, []
        shadow_rows, self._shadow_rows = self._shadow_rows, []
        calls = self._calls.drain()
        if not rows and not shadow_rows and not calls:
            return
        try:
            stored = await self.control.record.remote(rows, shadow_rows, calls)
        except RayTaskError:
            # The control plane received them and failed on them: sending them again would fail
            # the same way and hold up every later row behind them.
            logger.exception("the prediction log refused %d predictions; dropped", len(rows))
            if rows:  # Ray's counters refuse an increment of 0: a shipment of shadow outputs alone
                self.dropped_log_rows.inc(len(rows))
            return
        except Exception:  # noqa: BLE001 - put them back and try again; never fail a request for it
            logger.warning("could not ship %d predictions to the log", len(rows), exc_info=True)
            stored = False
        if not stored:  # unreachable, or its store failed: the next shipment takes them again
            self._log_rows = rows + self._log_rows
            self._shadow_rows = shadow_rows + self._shadow_rows
            overflow = len(self._log_rows) - LOG_BUFFER_ROWS
            if overflow > 0:
                del self._log_rows[:overflow]
                self.dropped_log_rows.inc(overflow)
            del self._shadow_rows[:-LOG_BUFFER_ROWS]

    def _shadow_done(self, outcome: ShadowOutcome) -> None:
        """A mirrored call finished: count it, and log what it predicted so feedback scores it."""
        tags = {"model": outcome.model, "version": outcome.version}
        self.metrics.shadow.inc(len(outcome.request_ids), {**tags, "status": outcome.status})
        if outcome.predictions is not None:
            name, now = deployment_name(outcome.model, outcome.version), time.time()
            self._shadow_rows.extend(
                (rid, now, {name: float(p)}) for rid, p in zip(outcome.request_ids, outcome.predictions)
            )

    @app.post(
        "/v1/predict",
        response_model=Prediction | BatchPrediction,
        responses=ERRORS,
        openapi_extra=json_body(PredictRequest),
        summary="Predict the next-step return of one window or a batch",
    )
    async def predict(self, request: Request) -> Response:
        # POST /v1/predict is answered by PredictAhead or PredictFastPath before routing; this route documents it.
        arrived = time.perf_counter()
        status, content = await self.answer_predict(await self._body(request), arrived)
        return Response(content, status, media_type="application/json")

    async def _body(self, request: Request) -> bytes:
        """The request's body, read no further than `max_body_bytes` (413 past it)."""
        if (body := await read_body(request.receive, request.headers.raw, self.limits.max_body_bytes)) is None:
            raise RequestError(413, over_the_limit(self.limits.max_body_bytes))
        return body

    async def answer_ahead(self, body: bytes | None, arrived: float) -> tuple[int, bytes]:
        """`answer_predict` for `PredictAhead`, which runs ahead of Serve's ongoing-request count
        and its limit: counted in flight for the autoscaler, beyond max_ongoing_requests queued."""
        self._ahead.count(1)
        try:
            async with self._ongoing:
                return await self.answer_predict(body, arrived)
        finally:
            self._ahead.count(-1)

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Predicts answered ahead of Serve's wrapper, which its ongoing count does not see."""
        return {UNSEEN_IN_FLIGHT: self._ahead.mean()}

    async def answer_predict(self, body: bytes | None | ClientLeft, arrived: float) -> tuple[int, bytes]:
        """Status and JSON body answering one POST /v1/predict body (None: past the limit) that
        arrived at `arrived` (`time.perf_counter()`): the router's deadline counts from then."""
        if isinstance(body, ClientLeft):  # 499, as Serve counts a client that disconnects
            logger.info("a predict request's client left before its body was read")
            self.metrics.count(499, arrived)
            return 499, b""
        try:
            if body is None:
                raise RequestError(413, over_the_limit(self.limits.max_body_bytes))
            parsed = parse_predict(body, self.limits)
        except RequestError as exc:
            self.metrics.count(exc.status, arrived)
            return exc.status, orjson.dumps({"detail": exc.message})
        result = await self.predictor.predict(parsed.windows, parsed.keys, parsed.request_ids, arrived)
        refusal = result.refusal(parsed.single)
        answers = result.answers(parsed.request_ids)
        outcomes = result.counted_outcomes(refusal)
        degraded = 0 if refusal else sum(a["degraded"] for a in answers)  # a refusal serves no answer
        self.metrics.count(refusal[0] if refusal else 200, arrived, outcomes, degraded)
        for outcome in outcomes:
            self._calls.add(deployment_name(outcome.model, outcome.version), outcome.rows, outcome.status != "ok",
                            outcome.latency_s)
        now = time.time()
        self._log_rows.extend(
            (request_id, now, result.member_predictions(b)) for b, request_id in enumerate(parsed.request_ids)
        )
        if refusal:
            return refusal[0], orjson.dumps({"detail": refusal[1]})
        return 200, orjson.dumps(answers[0] if parsed.single else {"predictions": answers})

    @app.post(
        "/v1/feedback",
        responses=ERRORS,
        openapi_extra=json_body(FeedbackRequest),
        summary="Send the actual value of earlier predictions; trust is learned from it",
    )
    async def feedback(self, request: Request) -> Response:
        items = parse_feedback(await self._body(request), self.limits.max_body_bytes, self.args.ledger.max_feedback_items)
        await self._flush_log()  # our own recent predictions must be joinable at once
        result = await self.control.feedback.remote(items)
        if result["status"] != 200:
            return json_response({"detail": result["detail"]}, result["status"])
        return json_response(result["report"])

    @app.get("/v1/trust", summary="Weights, per-member error statistics and drift flags")
    async def trust(self) -> Response:
        return json_response(await self.control.trust.remote())

    @app.get("/healthz", summary="The router process is up")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Every member version has a ready replica", responses={503: {"model": ErrorBody}})
    async def readyz(self) -> Response:
        names = [(model, version) for model, versions in self._info.items() for version in versions]
        pings = [self._info[model][version]() for model, version in names]
        done = await asyncio.gather(*(asyncio.wait_for(p, INFO_WAIT_S) for p in pings), return_exceptions=True)
        not_ready = [deployment_name(m, v) for (m, v), r in zip(names, done) if isinstance(r, BaseException)]
        if not_ready:
            return json_response({"detail": f"not ready: {', '.join(not_ready)}"}, 503)
        return json_response({"status": "ready", "members": [deployment_name(m, v) for m, v in names]})

    @app.get("/v1/members", summary="Deployed member versions, their traffic splits and manifests")
    async def describe_members(self) -> Response:
        # As readyz: a version that does not answer (still deploying, stuck) holds no one's answer.
        infos = await asyncio.gather(
            *(asyncio.wait_for(info(), INFO_WAIT_S) for versions in self._info.values() for info in versions.values()),
            return_exceptions=True,
        )
        by_name = {info["deployment"]: info for info in infos if isinstance(info, dict)}
        traffic = self.predictor.traffic()
        return json_response({
            model: {
                "prior": spec.prior,
                "traffic": traffic[model]["split"],
                "shadow": traffic[model]["shadow"],
                "versions": {v: by_name.get(deployment_name(model, v), {"error": "unavailable"}) for v in spec.versions},
            }
            for model, spec in self.args.members.items()
        })


    @app.get("/v1/rollouts", summary="Traffic, rollout state and the history of every member's transitions",
             responses={503: {"model": ErrorBody}})
    async def rollouts(self) -> Response:
        return json_response(await self.control.rollouts.remote())

    # -- admin: bearer token required ---------------------------------------------------------
    def _refusal(self, authorization: str | None) -> Response | None:
        refused = authorise(authorization, self.admin_token)
        return None if refused is None else json_response({"detail": refused[1]}, refused[0])

    @staticmethod
    def _outcome(result: dict[str, Any]) -> Response:
        if result["status"] == 200:
            return json_response(result["traffic"])
        return json_response({"detail": result["detail"]}, result["status"])

    @app.get("/v1/admin/traffic", summary="Splits and shadows of every member", responses=ADMIN_ERRORS)
    async def admin_traffic(self, authorization: str | None = Header(None)) -> Response:
        if (refused := self._refusal(authorization)) is not None:
            return refused
        # The control plane's own view: this replica's copy may trail a change by one long poll.
        return json_response((await self.control.snapshot.remote(-1, 0.0))["traffic"])

    @app.put("/v1/admin/traffic/{member}", summary="Set a member's split and/or shadows", responses=ADMIN_ERRORS,
             openapi_extra=json_body(TrafficChange))
    async def admin_set_traffic(self, member: str, request: Request,
                                authorization: str | None = Header(None)) -> Response:
        if (refused := self._refusal(authorization)) is not None:
            return refused
        change = parse_model(await self._body(request), TrafficChange, self.limits.max_body_bytes)
        return self._outcome(await self.control.set_traffic.remote(member, change))

    @app.post("/v1/admin/rollouts/{member}", summary="Start a canary rollout of a member", responses=ADMIN_ERRORS,
              openapi_extra=json_body(RolloutStart))
    async def admin_start_rollout(self, member: str, request: Request,
                                  authorization: str | None = Header(None)) -> Response:
        if (refused := self._refusal(authorization)) is not None:
            return refused
        start = parse_model(await self._body(request), RolloutStart, self.limits.max_body_bytes)
        stable = start.pop("stable")
        return self._outcome(await self.control.start_rollout.remote(member, start, stable))

    @app.post("/v1/admin/rollouts/{member}/{action}", summary="Pause, resume, promote or roll back a rollout",
              responses=ADMIN_ERRORS)
    async def admin_rollout_action(self, member: str, action: Literal["pause", "resume", "promote", "rollback"],
                                   authorization: str | None = Header(None)) -> Response:
        if (refused := self._refusal(authorization)) is not None:
            return refused
        return self._outcome(await self.control.act.remote(member, action))
