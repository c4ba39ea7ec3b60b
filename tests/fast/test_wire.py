"""The raw float32 body of member calls over HTTP (no Ray)."""
from __future__ import annotations

import numpy as np
import pytest

from ensemble.wire import WireError, decode_predictions, decode_windows, encode


def test_windows_and_predictions_round_trip_exactly():
    windows = np.random.default_rng(3).normal(size=(5, 128, 8)).astype(np.float32)
    assert np.array_equal(decode_windows(encode(windows), 128, 8), windows)
    predictions = np.linspace(-1, 1, 5, dtype=np.float32)
    assert np.array_equal(decode_predictions(encode(predictions), 5), predictions)
    # float64 in is sent as float32, C order whatever the input's layout.
    assert decode_windows(encode(np.asfortranarray(windows.astype(np.float64))), 128, 8).dtype == np.float32


@pytest.mark.parametrize("body", [b"", b"\x00" * (128 * 8 * 4 + 4), b"\x00" * 7])
def test_a_body_that_is_not_whole_windows_is_refused(body: bytes):
    with pytest.raises(WireError, match="not a whole number"):
        decode_windows(body, 128, 8)


def test_a_wrong_number_of_predictions_is_refused():
    with pytest.raises(WireError, match="expected 3"):
        decode_predictions(encode(np.zeros(2, dtype=np.float32)), 3)
