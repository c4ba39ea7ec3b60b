"""The body of a member call over HTTP: float32 windows in, float32 predictions out.

Raw little-endian float32 in C order, no header: both ends know the window shape (T, F) from
the input contract, so a body of windows holds len / (T·F·4) of them. Encoding costs one copy
at most; pickling, JSON or base64 would cost more than the call it carries.
"""
from __future__ import annotations

import numpy as np

CONTENT_TYPE = "application/octet-stream"
_FLOAT32 = np.dtype("<f4")


class WireError(ValueError):
    """A body that is not a whole number of float32 windows (or predictions)."""


def encode(array: np.ndarray) -> bytes:
    return np.ascontiguousarray(array, dtype=_FLOAT32).tobytes()


def decode_windows(body: bytes | memoryview, window: int, n_features: int) -> np.ndarray:
    """float32 windows [B, window, n_features] from `body` (B ≥ 1)."""
    size = window * n_features * _FLOAT32.itemsize
    if not body or len(body) % size:
        raise WireError(f"body of {len(body)} bytes is not a whole number of {window}x{n_features} float32 windows")
    return np.frombuffer(body, dtype=_FLOAT32).reshape(-1, window, n_features)


def decode_predictions(body: bytes | memoryview, rows: int) -> np.ndarray:
    """float32 predictions [rows] from `body`."""
    if len(body) != rows * _FLOAT32.itemsize:
        raise WireError(f"expected {rows} float32 predictions, got {len(body)} bytes")
    return np.frombuffer(body, dtype=_FLOAT32)
