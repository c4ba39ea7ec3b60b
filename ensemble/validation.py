"""Request validation: raw JSON bytes to float32 windows, or a 4xx naming the field.

Bad input must never reach a model nor turn into a 500, and the checks run on every request,
so a valid body of the usual shape is read by simdjson straight into buffers; any other goes
through orjson and numpy, and the slow element-by-element scan runs only to name the offending
field once something is known to be wrong.
"""
from __future__ import annotations

import codecs
import json
import math
import os
from itertools import chain
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import simdjson
from pydantic import BaseModel, ValidationError


FLOAT32_MAX = float(np.finfo(np.float32).max)


class RequestError(Exception):
    """A client error: HTTP `status` with a message that names the field."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# What a window of market data cannot hold otherwise, by feature name: prices above zero, volume
# not below. Beyond them the nets' scale-free inputs blow up (a log of a clamped price): a window
# of random numbers made N-HiTS predict a return of 341,273 and the ensemble one of 68,255.
ABOVE_ZERO = frozenset({"close", "high", "low"})
NOT_BELOW_ZERO = frozenset({"volume"})


@dataclass(frozen=True)
class Limits:
    window: int
    n_features: int
    max_rows: int
    max_instances: int
    max_body_bytes: int
    features: tuple[str, ...] = ()  # column names; those in ABOVE_ZERO and NOT_BELOW_ZERO are checked

    def __post_init__(self) -> None:
        # One comparison per request: each value must be above its column's floor, which is 0 for
        # a price, the largest float32 below 0 for volume (so 0 passes), and -inf for the rest.
        floor = np.full(self.n_features, -np.inf, dtype=np.float32)
        for i, name in enumerate(self.features):
            if name in ABOVE_ZERO:
                floor[i] = 0.0
            elif name in NOT_BELOW_ZERO:
                floor[i] = np.nextafter(np.float32(0), np.float32(-1))
        object.__setattr__(self, "_floor", floor)

    def in_domain(self, window: np.ndarray) -> bool:
        """Whether every row of finite float32 `window` [rows, F] holds prices above zero and
        volume not below."""
        return bool((window > self._floor).all())

    def out_of_domain(self, window: np.ndarray, field: str) -> str:
        """Name the first value of `window` that `in_domain` refuses (errors only)."""
        r, c = np.argwhere(window <= self._floor)[0]
        name = self.features[c]
        bound = "above 0" if name in ABOVE_ZERO else "0 or more"
        return f"{field}[{r}][{c}]: {name} must be {bound}, got {float(window[r, c])!r}"


@dataclass
class PredictInput:
    windows: np.ndarray  # float32 [B, T, F], the last T rows of each window
    request_ids: list[str]
    keys: list[str | None]
    single: bool  # answer one object rather than {"predictions": [...]}


def new_request_id() -> str:
    return os.urandom(16).hex()  # as random as uuid4's hex, a fifth of its time


def load_json(body: bytes, max_body_bytes: int) -> Any:
    if len(body) > max_body_bytes:
        raise RequestError(413, f"body: {len(body)} bytes exceeds the limit of {max_body_bytes}")
    # JSON parsers may ignore a byte order mark (RFC 8259); the fast path's simdjson does, and
    # both paths must take the same bodies. orjson refuses it.
    body = body.removeprefix(codecs.BOM_UTF8)
    if not body:
        raise RequestError(400, "body: empty; send a JSON object")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if exc.doc[exc.pos:].startswith(("NaN", "Infinity")) or exc.msg == "number is infinity when parsed as double":
            # NaN and Infinity are not JSON, nor is a number past a double; refused all the same,
            # but naming the field, as for any other value that is not a finite number.
            try:  # integers as floats: an integer past a double is then infinity, as orjson saw it
                field = _non_finite_field(json.loads(body, parse_int=float))
            except (ValueError, RecursionError):  # not JSON in other ways too
                field = ""
            if field:
                raise RequestError(422, field) from None
        raise RequestError(400, f"body: invalid JSON ({exc})") from None


def _non_finite_field(value: Any, field: str = "") -> str:
    """'<field>: <value> is not a finite number' for the first such number in `value` (errors only)."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"{field or 'body'}: {value!r} is not a finite number"
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = _non_finite_field(item, f"{field}.{key}" if isinstance(key, str) and field else
                                  key if isinstance(key, str) else f"{field}[{key}]")
        if found:
            return found
    return ""


def _locate_bad_value(window: list, field: str, n_features: int) -> str:
    """Name the first element of a window that is not a finite number (slow path, errors only)."""
    for r, row in enumerate(window):
        if not isinstance(row, list):
            return f"{field}[{r}]: expected a list of {n_features} numbers, got {type(row).__name__}"
        if len(row) != n_features:
            return f"{field}[{r}]: expected {n_features} features, got {len(row)}"
        for c, value in enumerate(row):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return f"{field}[{r}][{c}]: expected a number, got {type(value).__name__}"
            if not abs(value) <= FLOAT32_MAX:  # also catches NaN
                return f"{field}[{r}][{c}]: {value!r} is not a finite float32"
    return f"{field}: not a list of rows of numbers"


def parse_window(window: Any, field: str, limits: Limits) -> np.ndarray:
    """One window as float32 [T, F]: its last T rows, every row checked."""
    if not isinstance(window, list):
        raise RequestError(422, f"{field}: expected a list of rows, got {type(window).__name__}")
    rows = len(window)
    if rows < limits.window:
        raise RequestError(422, f"{field}: {rows} rows, at least {limits.window} are needed")
    if rows > limits.max_rows:
        raise RequestError(413, f"{field}: {rows} rows exceeds the limit of {limits.max_rows}")
    array = _as_float64(window, rows, limits.n_features)
    if array is None:
        raise RequestError(422, _locate_bad_value(window, field, limits.n_features))
    array = _finite_float32(array)
    if array is None:
        raise RequestError(422, _locate_bad_value(window, field, limits.n_features))
    if not limits.in_domain(array):
        raise RequestError(422, limits.out_of_domain(array, field))
    return array[-limits.window :]


def _finite_float32(array: np.ndarray) -> np.ndarray | None:
    with np.errstate(over="ignore"):
        array = array.astype(np.float32)
    return array if np.isfinite(array).all() else None


_NUMBER_TYPES = frozenset({float, int})


def _as_float64(window: list, rows: int, n_features: int) -> np.ndarray | None:
    """`window` as float64 [rows, n_features], or None where it is not a list of rows of numbers
    (null becomes NaN here, for the finiteness check to name)."""
    try:
        array = np.array(window, dtype=np.float64)
    except (ValueError, TypeError):
        return None
    return array if array.shape == (rows, n_features) and _all_numbers(window) else None


def _all_numbers(rows: list[list[Any]]) -> bool:
    # np.array turns booleans and numeric strings into floats; JSON true or "1.5" is not a number
    # here. Collecting the types in C is twice as fast as a generator over the values.
    return set(map(type, chain.from_iterable(rows))) <= _NUMBER_TYPES


def _optional_str(obj: dict, name: str, field: str) -> str | None:
    value = obj.get(name)
    if value is not None and (not isinstance(value, str) or not 0 < len(value) <= 256):
        raise RequestError(422, f"{field}{name}: expected a string of 1 to 256 characters")
    return value


_SINGLE_KEYS = frozenset({"window", "key", "request_id"})


def parse_predict(body: bytes, limits: Limits) -> PredictInput:
    """Parse a POST /v1/predict body: one window or `instances`."""
    if len(body) <= limits.max_body_bytes and (parsed := _parse_usual(body, limits)) is not None:
        return parsed
    return _parse_any(body, limits)


def _parse_any(body: bytes, limits: Limits) -> PredictInput:
    """Any POST /v1/predict body, or the RequestError that names what is wrong in it."""
    payload = load_json(body, limits.max_body_bytes)
    if not isinstance(payload, dict):
        raise RequestError(422, f"body: expected a JSON object, got {type(payload).__name__}")
    if "instances" in payload:
        extra = sorted(set(payload) - {"instances"})
        if extra:
            raise RequestError(422, f"{extra[0]}: not allowed beside instances; put it in each instance")
        return _parse_instances(payload["instances"], limits)
    unknown = sorted(set(payload) - _SINGLE_KEYS)
    if unknown:
        raise RequestError(422, f"{unknown[0]}: unknown field")
    if "window" not in payload:
        raise RequestError(422, "window: field required (or send instances)")
    window = parse_window(payload["window"], "window", limits)
    request_id = _optional_str(payload, "request_id", "") or new_request_id()
    return PredictInput(window[None], [request_id], [_optional_str(payload, "key", "")], single=True)


# What simdjson raises on bad JSON (ValueError), on a value of another type than asked for
# (TypeError) and on an integer beyond 64 bits (RuntimeError).
_SIMDJSON_ERRORS = (ValueError, TypeError, RuntimeError)


def _parse_usual(body: bytes, limits: Limits) -> PredictInput | None:
    """A valid body of the usual shape, parsed by simdjson with each window's numbers read into
    one float64 buffer in C (`as_buffer`: no Python float per value). For the benchmark's 128x8
    window 44 µs, where orjson's Python lists read by numpy took 60. None for any other body, valid
    or not, which `_parse_any` then accepts or names the error of: one that
    repeats a key, nests arrays in a row, or has a '[' in a key or request id."""
    try:
        document = simdjson.Parser().parse(body)
        if not isinstance(document, simdjson.Object):
            return None
        names = list(document.keys())
        if names == ["instances"]:
            instances = document["instances"]
            if not isinstance(instances, simdjson.Array) or not 0 < len(instances) <= limits.max_instances:
                return None
            parts = [_usual_instance(instance, limits) for instance in instances]
            if None in parts:
                return None
            arrays = 1 + sum(len(window) + 1 for window, _, _ in parts)
        else:
            part = _usual_instance(document, limits)
            if part is None:
                return None
            parts, arrays = [part], len(part[0]) + 1
        # Each '[' opens the instances or a window or one of its rows (none is in a string, by
        # _usual_instance): no row holds an array, which as_buffer would flatten into it.
        if body.count(b"[") != arrays:
            return None
        windows = [_finite_float32(np.frombuffer(window.as_buffer(of_type="d"), np.float64)) for window, _, _ in parts]
    except _SIMDJSON_ERRORS:
        return None
    shape = (-1, limits.n_features)
    if any(window is None or not limits.in_domain(window.reshape(shape)) for window in windows):
        return None
    request_ids = [request_id or new_request_id() for _, request_id, _ in parts]
    if len(set(request_ids)) != len(request_ids):
        return None
    stacked = np.stack([window.reshape(shape)[-limits.window :] for window in windows])
    return PredictInput(stacked, request_ids, [key for _, _, key in parts], single=names != ["instances"])


def _usual_instance(instance: Any, limits: Limits) -> tuple[Any, str | None, str | None] | None:
    """(window, request id, key) of a bare window or a {window, key, request_id} object
    whose window has a valid row count, each row of n_features, and whose strings hold no '['."""
    if isinstance(instance, simdjson.Array):
        window, request_id, key = instance, None, None
    elif isinstance(instance, simdjson.Object):
        names = list(instance.keys())
        if "window" not in names or len(set(names)) != len(names) or not _SINGLE_KEYS.issuperset(names):
            return None
        window, request_id, key = instance["window"], instance.get("request_id"), instance.get("key")
        if not (_usual_str(request_id) and _usual_str(key)):
            return None
    else:
        return None
    if (not isinstance(window, simdjson.Array) or not limits.window <= len(window) <= limits.max_rows
            or set(map(len, window)) != {limits.n_features}):
        return None
    return window, request_id, key


def _usual_str(value: Any) -> bool:
    return value is None or (isinstance(value, str) and 0 < len(value) <= 256 and "[" not in value)


def _parse_instances(instances: Any, limits: Limits) -> PredictInput:
    if not isinstance(instances, list) or not instances:
        raise RequestError(422, "instances: expected a non-empty list of windows")
    if len(instances) > limits.max_instances:
        raise RequestError(413, f"instances: {len(instances)} exceeds the limit of {limits.max_instances}")
    windows, request_ids, keys = [], [], []
    for i, instance in enumerate(instances):
        field = f"instances[{i}]"
        if isinstance(instance, dict):
            unknown = sorted(set(instance) - _SINGLE_KEYS)
            if unknown:
                raise RequestError(422, f"{field}.{unknown[0]}: unknown field")
            if "window" not in instance:
                raise RequestError(422, f"{field}.window: field required")
            windows.append(parse_window(instance["window"], f"{field}.window", limits))
            request_ids.append(_optional_str(instance, "request_id", f"{field}.") or new_request_id())
            keys.append(_optional_str(instance, "key", f"{field}."))
        else:
            windows.append(parse_window(instance, field, limits))
            request_ids.append(new_request_id())
            keys.append(None)
    if len(set(request_ids)) != len(request_ids):
        raise RequestError(422, "instances: request_id values must be unique within a batch")
    return PredictInput(np.stack(windows), request_ids, keys, single=False)


_LABEL_KEYS = frozenset({"request_id", "actual"})


def _parse_label(item: Any, field: str) -> tuple[str, float]:
    if not isinstance(item, dict):
        raise RequestError(422, f"{field or 'body'}: expected an object with request_id and actual")
    prefix = f"{field}." if field else ""
    unknown = sorted(set(item) - _LABEL_KEYS)
    if unknown:
        raise RequestError(422, f"{prefix}{unknown[0]}: unknown field")
    for name in ("request_id", "actual"):
        if name not in item:
            raise RequestError(422, f"{prefix}{name}: field required")
    request_id = _optional_str(item, "request_id", prefix)
    if request_id is None:  # a label names the prediction it is for
        raise RequestError(422, f"{prefix}request_id: expected a string of 1 to 256 characters")
    actual = item["actual"]
    if isinstance(actual, bool) or not isinstance(actual, (int, float)):
        raise RequestError(422, f"{prefix}actual: expected a number, got {type(actual).__name__}")
    if not abs(actual) <= FLOAT32_MAX:
        raise RequestError(422, f"{prefix}actual: {actual!r} is not a finite number")
    return request_id, float(actual)


def parse_feedback(body: bytes, max_body_bytes: int, max_items: int) -> list[tuple[str, float]]:
    """Parse POST /v1/feedback: one {request_id, actual} or {"items": [...]}; all valid or nothing."""
    payload = load_json(body, max_body_bytes)
    if isinstance(payload, dict) and "items" in payload:
        extra = sorted(set(payload) - {"items"})
        if extra:
            raise RequestError(422, f"{extra[0]}: not allowed beside items")
        items = payload["items"]
        if not isinstance(items, list) or not items:
            raise RequestError(422, "items: expected a non-empty list of {request_id, actual}")
        if len(items) > max_items:
            raise RequestError(413, f"items: {len(items)} exceeds the limit of {max_items}")
        return [_parse_label(item, f"items[{i}]") for i, item in enumerate(items)]
    return [_parse_label(payload, "")]


def parse_model(body: bytes, model: type[BaseModel], max_body_bytes: int) -> dict[str, Any]:
    """Parse a small JSON body (admin changes) with its pydantic schema, strictly (a share sent
    as true or "0.5" is refused, not converted); the first error names its field."""
    payload = load_json(body, max_body_bytes)
    try:
        return model.model_validate(payload, strict=True).model_dump()
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"]) or "body"
        raise RequestError(422, f"{field}: {error['msg']}") from None
