"""Features engineered from a raw window for the tree models, vectorised over the batch."""
from __future__ import annotations

import numpy as np

HORIZONS = (1, 2, 3, 5, 10, 20, 60)
FEATURE_NAMES: tuple[str, ...] = (
    *(f"ret_{h}" for h in HORIZONS),
    *(f"std_{h}" for h in (5, 20, 60)),
    "range_last", "volume_z", "volatility", "rsi", "macd", "momentum", "lag_ret_1", "lag_ret_2",
)


def engineer(batch: np.ndarray) -> np.ndarray:
    """float [B, T, 8] raw windows -> float32 [B, len(FEATURE_NAMES)]."""
    close = batch[:, :, 0].astype(np.float64)
    log_close = np.log(np.maximum(close, 1e-12))
    returns = np.diff(log_close, axis=1)
    last = log_close[:, -1]
    columns = [last - log_close[:, -1 - h] for h in HORIZONS]
    columns += [returns[:, -n:].std(axis=1) for n in (5, 20, 60)]
    columns.append((batch[:, -1, 1] - batch[:, -1, 2]) / np.maximum(close[:, -1], 1e-12))
    log_volume = np.log(np.maximum(batch[:, :, 3].astype(np.float64), 1.0))
    columns.append((log_volume[:, -1] - log_volume.mean(axis=1)) / (log_volume.std(axis=1) + 1e-6))
    columns += [batch[:, -1, 4], batch[:, -1, 5] / 100.0, batch[:, -1, 6], batch[:, -1, 7]]
    columns += [returns[:, -2], returns[:, -3]]
    return np.stack(columns, axis=1).astype(np.float32)
