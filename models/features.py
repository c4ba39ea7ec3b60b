"""Features the tree models see, engineered from raw windows, vectorised over the batch.

Everything is scale-free (log returns, ratios, z-scores), so a model trained at one price
level serves at any other.
"""
from __future__ import annotations

import numpy as np

from models.data import CLOSE, HIGH, LOW, MACD, MOMENTUM, RSI, VOLATILITY, VOLUME

LAGS = 5  # the last few one-step returns, newest first
HORIZONS = (10, 20, 60, 120)  # cumulative returns over longer spans
STD_SPANS = (5, 20, 60)  # realised volatility over several spans

FEATURE_NAMES: tuple[str, ...] = (
    *(f"ret_lag{lag}" for lag in range(1, LAGS + 1)),
    "zret_lag1",
    "zret_lag2",
    *(f"ret_{h}" for h in HORIZONS),
    *(f"std_{n}" for n in STD_SPANS),
    "std_ratio_5_60",
    "range_last",
    "close_in_range",
    "volume_z",
    "volume_z_mean5",
    "volatility",
    "rsi",
    "rsi_change5",
    "macd",
    "momentum",
)
MIN_WINDOW = max(HORIZONS) + 1
_HORIZON_COLUMNS = -1 - np.array(HORIZONS)
_STD_COLUMNS = np.array(STD_SPANS) - 1
_TINY = np.finfo(np.float64).tiny  # keeps log() and a ratio finite at 0, whatever the prices' scale


def engineer(batch: np.ndarray) -> np.ndarray:
    """Raw windows float [B, T, 8], T >= MIN_WINDOW -> float32 [B, len(FEATURE_NAMES)].

    Written as a few whole-batch array operations rather than one per feature: at B=1 the
    cost is numpy's per-call overhead, and this runs on every tree prediction.
    """
    # float64 for differences of nearby log prices; only the columns read in full are converted.
    log_close = np.log(np.maximum(batch[:, -MIN_WINDOW:, CLOSE].astype(np.float64), _TINY))
    log_volume = np.log(np.maximum(batch[:, :, VOLUME].astype(np.float64), 1.0))
    last = batch[:, -1].astype(np.float64)
    close, high, low, volatility = last[:, CLOSE : CLOSE + 1], last[:, HIGH], last[:, LOW], last[:, VOLATILITY]
    recent = np.diff(log_close[:, -1 - max(STD_SPANS) :], axis=1)[:, ::-1]  # one-step returns, newest first
    # Standard deviations of the newest n returns, for every n at once, from running sums.
    counts = np.array(STD_SPANS, dtype=np.float64)
    means = np.cumsum(recent, axis=1)[:, _STD_COLUMNS] / counts
    stds = np.sqrt(np.maximum(np.cumsum(recent * recent, axis=1)[:, _STD_COLUMNS] / counts - means * means, 0.0))
    volume_mean, volume_sq = log_volume.mean(axis=1), (log_volume * log_volume).mean(axis=1)
    volume_std = np.sqrt(np.maximum(volume_sq - volume_mean * volume_mean, 0.0)) + 1e-6
    volume_z = (log_volume[:, -5:] - volume_mean[:, None]) / volume_std[:, None]
    return np.concatenate([
        recent[:, :LAGS],
        recent[:, :2] / (volatility[:, None] + 1e-6),  # in units of the current volatility
        log_close[:, -1:] - log_close[:, _HORIZON_COLUMNS],
        stds,
        np.stack([
            stds[:, 0] / (stds[:, -1] + 1e-9),
            (high - low) / close[:, 0],
            (close[:, 0] - low) / np.maximum(high - low, _TINY),
            volume_z[:, -1],
            volume_z.mean(axis=1),
            volatility,
            last[:, RSI] / 100.0,
            (last[:, RSI] - batch[:, -6, RSI]) / 100.0,
            last[:, MACD] / close[:, 0],  # MACD is in price units
            last[:, MOMENTUM],
        ], axis=1),
    ], axis=1, dtype=np.float32)


def check_feature_names(names: list[str] | None) -> None:
    """Refuse a tree model trained on other features than `engineer` computes (train/serve skew)."""
    if list(names or ()) != list(FEATURE_NAMES):
        raise ValueError(f"model was trained on features {names}, engineer() computes {list(FEATURE_NAMES)}")
