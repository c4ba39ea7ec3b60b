"""Deterministic synthetic market data: OHLCV plus indicators, cut into windows.

The returns carry learnable structure (autocorrelation, a slowly switching drift regime,
volatility clustering and a mean-reversion pull on the MACD), so models beat predicting
zero on the holdout, as they would on a real, weakly predictable signal.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

FEATURES: tuple[str, ...] = ("close", "high", "low", "volume", "volatility", "rsi", "macd", "momentum")
WINDOW = 128
N_FEATURES = len(FEATURES)
WARMUP = 64  # steps dropped so every indicator is defined


def _ema(x: np.ndarray, span: int) -> np.ndarray:
    alpha = 2.0 / (span + 1)
    out = np.empty_like(x)
    acc = x[0]
    for i, value in enumerate(x):
        acc = alpha * value + (1 - alpha) * acc
        out[i] = acc
    return out


def _rolling_mean(x: np.ndarray, n: int) -> np.ndarray:
    c = np.cumsum(np.concatenate([[0.0], x]))
    out = np.empty_like(x)
    out[n - 1 :] = (c[n:] - c[:-n]) / n
    out[: n - 1] = c[1:n] / np.arange(1, n)
    return out


def generate_market(n_steps: int, seed: int) -> np.ndarray:
    """float32 [n_steps, 8] in FEATURES order."""
    rng = np.random.default_rng(seed)
    total = n_steps + WARMUP
    shocks = rng.standard_normal(total)
    regime = np.cumsum(rng.random(total) < 0.004) % 2  # slow drift regime switches
    drift = np.where(regime == 1, 4e-4, -3e-4)
    returns = np.zeros(total)
    variance = np.full(total, 1e-4)
    for t in range(2, total):  # GARCH(1,1) volatility with AR(2) returns
        variance[t] = 2e-6 + 0.1 * returns[t - 1] ** 2 + 0.88 * variance[t - 1]
        returns[t] = drift[t] + 0.25 * returns[t - 1] - 0.1 * returns[t - 2] + np.sqrt(variance[t]) * shocks[t]
    close = 100.0 * np.exp(np.cumsum(returns))
    spread = np.abs(rng.standard_normal(total)) * np.sqrt(variance) * close
    high, low = close + spread, close - spread * rng.uniform(0.5, 1.0, total)
    volume = np.exp(12 + 40 * np.abs(returns) + 0.3 * rng.standard_normal(total))
    volatility = np.sqrt(_rolling_mean(returns**2, 20))
    gains, losses = _rolling_mean(np.maximum(returns, 0), 14), _rolling_mean(np.maximum(-returns, 0), 14)
    rsi = 100 - 100 / (1 + gains / np.maximum(losses, 1e-12))
    macd = (_ema(close, 12) - _ema(close, 26)) / close
    momentum = np.log(close / np.concatenate([np.full(10, close[0]), close[:-10]]))
    series = np.stack([close, high, low, volume, volatility, rsi, macd, momentum], axis=1)
    return series[WARMUP:].astype(np.float32)


def make_windows(series: np.ndarray, start: int, stop: int, stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Windows ending at t in [start + WINDOW - 1, stop - 1) and targets close[t+1]/close[t] - 1."""
    block = series[start:stop]
    windows = sliding_window_view(block[:-1], (WINDOW, N_FEATURES))[::stride, 0]
    close = block[:, 0].astype(np.float64)
    ends = np.arange(WINDOW - 1, len(block) - 1)[::stride]
    targets = close[ends + 1] / close[ends] - 1.0
    return np.ascontiguousarray(windows), targets.astype(np.float32)


def sample_windows(n: int, seed: int) -> np.ndarray:
    """n float32 windows [n, WINDOW, N_FEATURES] for clients, tests and benchmarks."""
    return make_windows(generate_market(n + WINDOW + 1, seed), 0, n + WINDOW + 1)[0][:n]
