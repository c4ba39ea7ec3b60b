"""HTTP contract, version 1: request and response schemas.

The router parses bodies itself (see `validation`) because pydantic validation of a
128×8 list of lists per request costs more than the whole model call; these models
describe the contract in /openapi.json and shape the responses.
"""
from __future__ import annotations

from pydantic import Field

from ensemble.rollout import RolloutPlan
from ensemble.strict import StrictModel

Window = list[list[float]]


class PredictInstance(StrictModel):
    window: Window = Field(description="Rows of 8 features (close, high, low, volume, volatility, rsi, macd, momentum), oldest first; at least T rows, the last T are used. Prices above 0, volume 0 or more.")
    key: str | None = Field(None, description="Routing key: the same key reaches the same version of each member while the split is unchanged.")
    request_id: str | None = Field(None, description="Caller's id for this prediction, used to send feedback later; generated when absent.")


class PredictRequest(StrictModel):
    """Either one instance (`window`, `key`, `request_id`) or a batch in `instances`."""

    window: Window | None = Field(None, description="One window; use `instances` for several.")
    key: str | None = Field(None, description="Routing key of the single window.")
    request_id: str | None = Field(None, description="Id of the single window's prediction.")
    instances: list[Window | PredictInstance] | None = Field(
        None, description="Several windows (bare, or objects with window/key/request_id), answered in order."
    )


class MemberAnswer(StrictModel):
    version: str = Field(description="Version of the member that answered.")
    prediction: float = Field(description="The member's prediction of the next-step return.")
    weight: float = Field(description="The member's weight in the combined prediction (weights of answering members sum to 1).")


class Prediction(StrictModel):
    request_id: str = Field(description="Id to send the actual value back under (POST /v1/feedback).")
    prediction: float = Field(description="Trust-weighted combination of the members' predictions of the next-step return.")
    members: dict[str, MemberAnswer] = Field(description="Each answering member's version, prediction and weight.")
    degraded: bool = Field(description="True when some member failed or missed the deadline and was left out.")
    missing: list[str] = Field(description="Members left out of this answer.")


class BatchPrediction(StrictModel):
    predictions: list[Prediction] = Field(description="One answer per instance, in request order.")


class ErrorBody(StrictModel):
    detail: str = Field(description="What was wrong, naming the field.")


class Label(StrictModel):
    request_id: str = Field(description="The request_id of an earlier prediction.")
    actual: float = Field(description="The value that really happened (finite).")


class FeedbackRequest(StrictModel):
    """Either one label (`request_id`, `actual`) or a batch in `items`."""

    request_id: str | None = Field(None, description="Id of the prediction this label belongs to.")
    actual: float | None = Field(None, description="The actual next-step return.")
    items: list[Label] | None = Field(None, description="Several labels, applied all or none.")


class RolloutStart(RolloutPlan):
    """A rollout plan, and optionally which version is the stable one."""

    stable: str | None = Field(None, description="The version the canary is judged against; default: the one with most traffic.")
