"""Request validation: every kind of bad input is a 4xx naming the field, never an exception."""
import codecs

import numpy as np
import orjson
import pytest

from ensemble.validation import Limits, RequestError, parse_model, parse_predict
from models.data import CLOSE, FEATURES, HIGH, LOW, VOLUME, sample_windows

T, F = 128, 8
LIMITS = Limits(window=T, n_features=F, max_rows=300, max_instances=4, max_body_bytes=2_000_000)


def window(rows: int = T, seed: int = 0) -> list[list[float]]:
    return np.random.default_rng(seed).normal(size=(rows, F)).round(6).tolist()


def body(payload: object) -> bytes:
    return orjson.dumps(payload)


def rejected(raw: bytes, limits: Limits = LIMITS) -> RequestError:
    with pytest.raises(RequestError) as info:
        parse_predict(raw, limits)
    return info.value


def test_single_window_uses_last_t_rows():
    w = window(T + 10)
    parsed = parse_predict(body({"window": w, "key": "k1", "request_id": "r1"}), LIMITS)
    assert parsed.single and parsed.request_ids == ["r1"] and parsed.keys == ["k1"]
    assert parsed.windows.shape == (1, T, F) and parsed.windows.dtype == np.float32
    np.testing.assert_allclose(parsed.windows[0], np.array(w[-T:], dtype=np.float32))


def test_instances_bare_and_objects_in_order():
    parsed = parse_predict(body({"instances": [window(seed=1), {"window": window(seed=2), "key": "a"}]}), LIMITS)
    assert not parsed.single and parsed.windows.shape == (2, T, F)
    assert parsed.keys == [None, "a"] and len(set(parsed.request_ids)) == 2
    np.testing.assert_allclose(parsed.windows[1], np.array(window(seed=2), dtype=np.float32))


@pytest.mark.parametrize(
    "payload, status, field",
    [
        ({"window": window(T - 1)}, 422, "window: 127 rows"),
        ({"window": window(301)}, 413, "window: 301 rows exceeds"),
        ({"window": [row[:7] for row in window()]}, 422, "window[0]: expected 8 features"),
        ({"window": window()[:-1] + [["x"] * 8]}, 422, "window[127][0]: expected a number, got str"),
        ({"window": window()[:-1] + [[True] * 8]}, 422, "window[127][0]: expected a number, got bool"),
        ({"window": window()[:-1] + [[None] * 8]}, 422, "window[127][0]: expected a number, got NoneType"),
        ({"window": window()[:-1] + [["1.5"] * 8]}, 422, "window[127][0]: expected a number, got str"),
        ({"window": window()[:5] + [1.0] + window()[6:]}, 422, "window[5]: expected a list"),
        ({"window": [[1e39] * 8] + window()}, 422, "window[0][0]: 1e+39 is not a finite float32"),
        ({"window": "abc"}, 422, "window: expected a list of rows"),
        ({}, 422, "window: field required"),
        ({"window": window(), "extra": 1}, 422, "extra: unknown field"),
        ({"window": window(), "key": 5}, 422, "key: expected a string"),
        ({"instances": []}, 422, "instances: expected a non-empty list"),
        ({"instances": [window()] * 5}, 413, "instances: 5 exceeds"),
        ({"instances": [window(), window(T - 3)]}, 422, "instances[1]: 125 rows"),
        ({"instances": [{"window": window(), "bogus": 1}]}, 422, "instances[0].bogus: unknown field"),
        ({"instances": [{"key": "a"}]}, 422, "instances[0].window: field required"),
        ({"instances": [window()], "key": "a"}, 422, "key: not allowed beside instances"),
        ({"instances": [{"window": window(), "request_id": "x"}] * 2}, 422, "request_id values must be unique"),
        ([1, 2], 422, "body: expected a JSON object"),
    ],
)
def test_bad_input_names_the_field(payload, status, field):
    error = rejected(body(payload))
    assert error.status == status
    assert field in error.message


@pytest.mark.parametrize("raw", [b"", b"{", b'{"window": [1, NaN', b"[" * 5000 + b"NaN" + b"]" * 5000, b"\xff\xfe"])
def test_invalid_json_is_400(raw):
    assert rejected(raw).status == 400


@pytest.mark.parametrize("raw, message", [
    (b'{"window": NaN}', "window: nan is not a finite number"),
    (b'{"window": [[1, -Infinity]]}', "window[0][1]: -inf is not a finite number"),
    (b'{"instances": [{"window": [[1e400]]}]}', "instances[0].window[0][0]: inf is not a finite number"),
    (b'{"window": [[1' + b"0" * 400 + b']]}', "window[0][0]: inf is not a finite number"),  # an integer past a double
    (b'{"window": [[-1' + b"0" * 5000 + b']]}', "window[0][0]: -inf is not a finite number"),  # and past int()'s digits
])
def test_nan_and_infinity_which_json_cannot_hold_are_422_naming_the_field(raw, message):
    error = rejected(raw)
    assert (error.status, error.message) == (422, message)


def test_body_limit_is_413():
    small = Limits(T, F, 300, 4, max_body_bytes=1024)
    error = rejected(body({"window": window()}), small)
    assert error.status == 413 and "body" in error.message


def test_nan_inside_numbers_is_rejected():
    # NaN cannot be written in JSON; a huge exponent is the way infinity sneaks in.
    error = rejected(b'{"window": [' + b",".join([b"[1e308,1,1,1,1,1,1,1]"] * T) + b"]}")
    assert error.status == 422 and "window[0][0]" in error.message


MARKET = Limits(T, F, 300, 4, 2_000_000, FEATURES)


def market_window(rows: int = T) -> list[list[float]]:
    """Rows of market data (positive prices and volume); past T, two windows end to end."""
    return np.concatenate(sample_windows(2, seed=4))[-rows:].tolist()


def with_value(w: list[list[float]], row: int, column: int, value: float) -> list[list[float]]:
    w = [list(r) for r in w]
    w[row][column] = value
    return w


@pytest.mark.parametrize("payload, message", [
    ({"window": with_value(market_window(), 127, CLOSE, -0.5)}, "window[127][0]: close must be above 0, got -0.5"),
    ({"window": with_value(market_window(T + 2), 0, LOW, 0.0)}, "window[0][2]: low must be above 0, got 0.0"),
    ({"window": with_value(market_window(), 9, VOLUME, -1.0)}, "window[9][3]: volume must be 0 or more, got -1.0"),
    ({"instances": [market_window(), {"window": with_value(market_window(), 3, HIGH, -2.0)}]},
     "instances[1].window[3][1]: high must be above 0, got -2.0"),
])
def test_prices_at_or_below_zero_and_negative_volume_are_422_naming_the_value(payload, message):
    error = rejected(body(payload), MARKET)
    assert (error.status, error.message) == (422, message)


def test_a_market_window_passes_the_domain_and_zero_volume_is_volume():
    w = with_value(market_window(), 5, VOLUME, 0.0)
    assert parse_predict(body({"window": w}), MARKET).windows.shape == (1, T, F)
    # Without feature names (a contract that gives none) nothing is checked beyond finiteness.
    assert parse_predict(body({"window": with_value(w, 0, CLOSE, -1.0)}), LIMITS).windows.shape == (1, T, F)


def same_input(a, b) -> None:
    def given(ids: list[str]) -> list[str]:  # the ids the body gave; each parse generates new others
        return [i if len(i) < 32 else "generated" for i in ids]

    assert (a.single, a.keys, given(a.request_ids)) == (b.single, b.keys, given(b.request_ids))
    assert a.windows.dtype == b.windows.dtype == np.float32
    np.testing.assert_array_equal(a.windows, b.windows)


USUAL = [
    {"window": window(T + 3), "key": "k1", "request_id": "r1"},
    {"request_id": "r2", "window": np.random.default_rng(3).integers(-9, 9, size=(T, F)).tolist()},
    {"instances": [window(seed=1), {"window": window(T + 1, seed=2), "key": "a", "request_id": "x"}]},
]


@pytest.mark.parametrize("payload", USUAL)
def test_usual_bodies_parse_alike_by_simdjson_and_by_the_full_parser(payload):
    from ensemble.validation import _parse_any, _parse_usual

    raw = body(payload)
    spaced = orjson.dumps(payload, option=orjson.OPT_INDENT_2)  # whitespace between every token
    for shortcut in (_parse_usual(raw, LIMITS), _parse_usual(spaced, LIMITS)):
        assert shortcut is not None
        same_input(shortcut, _parse_any(raw, LIMITS))


def test_numbers_in_every_json_spelling_read_alike():
    from ensemble.validation import _parse_any, _parse_usual

    rows = [f"[{','.join(['1E+2', '-0', '0.000000001', '3.4028234e38', '-1.5e-45', '123456789012', '7', '2.5e-3'])}]"]
    raw = ('{"window":[' + ",".join(rows * T) + "]}").encode()
    same_input(_parse_usual(raw, LIMITS), _parse_any(raw, LIMITS))


def test_a_byte_order_mark_is_ignored_by_both_parsers():
    from ensemble.validation import _parse_any, _parse_usual

    usual = codecs.BOM_UTF8 + body({"window": window(), "request_id": "r1"})
    same_input(_parse_usual(usual, LIMITS), _parse_any(usual, LIMITS))
    unusual = b'{"window": 1, "window": ' + body(window()) + b"}"  # left to the full parser
    same_input(parse_predict(codecs.BOM_UTF8 + unusual, LIMITS), parse_predict(unusual, LIMITS))
    with pytest.raises(RequestError, match="empty"):
        parse_predict(codecs.BOM_UTF8, LIMITS)


@pytest.mark.parametrize(
    "raw",
    [
        body({"window": window(), "key": "a[1]"}),  # a '[' in a string
        b'{"window": "abc", "window": ' + body(window()) + b"}",  # a repeated key: the last counts
        b'{"window":[[123456789012345678901234567890' + b",1" * (F - 1) + b"]" + b",[1,1,1,1,1,1,1,1]" * (T - 1) + b"]}",
    ],
)
def test_unusual_valid_bodies_are_left_to_the_full_parser(raw):
    from ensemble.validation import _parse_any, _parse_usual

    assert _parse_usual(raw, LIMITS) is None
    same_input(parse_predict(raw, LIMITS), _parse_any(raw, LIMITS))


@pytest.mark.parametrize(
    "raw, field",
    [
        (body({"window": window()[:-1] + [[[1.0]] * 8]}), "window[127][0]: expected a number, got list"),
        (body({"window": window()[:-1] + [{}]}), "window[127]: expected a list of 8 numbers, got dict"),
        (body({"window": window()[:-1] + [[None] * 8], "key": "k"}), "window[127][0]: expected a number, got NoneType"),
        (body({"instances": [window(), window()[:-1] + [[1.0] * 9]]}), "instances[1][127]: expected 8 features"),
        (body({"window": window()[:-1] + [["1.5"] * 8], "request_id": '""' * 8}), "window[127][0]: expected a number, got str"),
        (body({"window": window()[:-1] + [["1.5"] * 8], "request_id": "r"}).replace(b'"r"', rb'"\u0022\u0022"'),
         "window[127][0]: expected a number, got str"),
        (body({"instances": [{"window": window(), "key": "true"}, window()[:-1] + [[False] * 8]]}), "instances[1][127][0]: expected a number, got bool"),
        (body({"instances": [{"window": window()[:-1] + [["2"] * 8], "key": "a"}]}), "instances[0].window[127][0]: expected a number, got str"),
        # Rows of eight that simdjson's flattening would read as 16 numbers
        (body({"window": window()[:-2] + [[1.0] * 7 + [[]], [1.0] * 7 + [[2.0, 3.0]]]}), "window[126][7]: expected a number, got list"),
        (body({"window": window()[:-1] + [{str(i): 1.0 for i in range(8)}]}), "window[127]: expected a list of 8 numbers, got dict"),
        (body({"window": window()[:-1] + ["abcdefgh"]}), "window[127]: expected a list of 8 numbers, got str"),
    ],
)
def test_bad_windows_are_named_whichever_way_they_are_parsed(raw, field):
    error = rejected(raw)
    assert error.status == 422 and field in error.message, error.message


from ensemble.validation import parse_feedback  # noqa: E402


def test_feedback_single_and_batch():
    assert parse_feedback(body({"request_id": "a", "actual": 0.5}), 10_000, 10) == [("a", 0.5)]
    items = [{"request_id": f"r{i}", "actual": i} for i in range(3)]
    assert parse_feedback(body({"items": items}), 10_000, 10) == [("r0", 0.0), ("r1", 1.0), ("r2", 2.0)]


@pytest.mark.parametrize(
    "payload, status, field",
    [
        ({"request_id": "a"}, 422, "actual: field required"),
        ({"actual": 1.0}, 422, "request_id: field required"),
        ({"request_id": "a", "actual": "1"}, 422, "actual: expected a number"),
        ({"request_id": "a", "actual": True}, 422, "actual: expected a number"),
        ({"request_id": "a", "actual": 1e39}, 422, "actual: 1e+39 is not a finite"),
        ({"request_id": 5, "actual": 1}, 422, "request_id: expected a string"),
        ({"request_id": None, "actual": 1}, 422, "request_id: expected a string"),
        ({"items": [{"request_id": "a", "actual": 1}, {"request_id": None, "actual": 1}]}, 422,
         "items[1].request_id: expected a string"),
        ({"items": [{"request_id": "a", "actual": 1}, {"request_id": "b"}]}, 422, "items[1].actual: field required"),
        ({"items": [{"request_id": "a", "actual": 1}] * 11}, 413, "items: 11 exceeds"),
        ({"items": []}, 422, "items: expected a non-empty list"),
        ({"items": [1]}, 422, "items[0]: expected an object"),
        ({"request_id": "a", "actual": 1, "x": 2}, 422, "x: unknown field"),
    ],
)
def test_bad_feedback_names_the_field(payload, status, field):
    with pytest.raises(RequestError) as info:
        parse_feedback(body(payload), 10_000, 10)
    assert info.value.status == status and field in info.value.message


def test_admin_bodies_are_parsed_strictly_and_name_the_field():
    from ensemble.schemas import RolloutStart
    from ensemble.traffic_control import TrafficChange

    assert parse_model(b'{"split": {"v1": 1, "v2": 0.0}}', TrafficChange, 10_000)["split"] == {"v1": 1.0, "v2": 0.0}
    for body, field in ((b'{"split": {"v1": true}}', "split.v1"), (b'{"shadow": {"v2": "0.5"}}', "shadow.v2"),
                        (b'{"canary": "v2", "min_labels": 10.0}', "min_labels")):
        model = RolloutStart if b"canary" in body else TrafficChange
        with pytest.raises(RequestError) as error:
            parse_model(body, model, 10_000)
        assert error.value.status == 422 and error.value.message.startswith(f"{field}: ")
