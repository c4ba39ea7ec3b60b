"""Deterministic synthetic market data: OHLCV plus indicators, cut into model windows.

Returns are weakly predictable, as real ones are, but with enough structure for models to
beat predicting zero out of time. In units of the current volatility, the expected next
return is the sum of
  - short-term autocorrelation of standardised returns (AR(2)),
  - a slowly switching drift regime (a hidden two-state Markov chain),
  - trend following on 10-step momentum,
  - mean reversion once RSI leaves its 30..70 band (a threshold, not linear),
  - continuation of the last move when volume is unusually high (an interaction),
and the noise has GARCH(1,1) volatility clustering and fat (Student-t) tails.
"""
from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

FEATURES: tuple[str, ...] = ("close", "high", "low", "volume", "volatility", "rsi", "macd", "momentum")
WINDOW = 128
N_FEATURES = len(FEATURES)
CLOSE, HIGH, LOW, VOLUME, VOLATILITY, RSI, MACD, MOMENTUM = range(N_FEATURES)

WARMUP = 200  # simulated then dropped, so GARCH and every indicator start settled
_RSI_PERIOD, _MACD_FAST, _MACD_SLOW, _MOMENTUM_LAG, _VOLATILITY_SPAN = 14, 12, 26, 10, 20
_REGIME_SWITCH = 1 / 500  # per-step probability: regimes last ~500 steps
_GARCH = (0.05, 0.93)  # (alpha, beta); unconditional per-step volatility is _BASE_VOL
_BASE_VOL = 0.002
_T_DOF = 6


def generate_market(n_steps: int, seed: int) -> np.ndarray:
    """Simulate `n_steps` rows of float32 [n_steps, 8] in FEATURES order; same seed, same data.

    The signal reads the indicators of the previous step, so the simulation is one sequential
    pass over plain Python floats (a few milliseconds per thousand steps).
    """
    rng = np.random.default_rng(seed)
    total = n_steps + WARMUP
    # Student-t noise rescaled to unit variance: fat tails as in real returns.
    noise = (rng.standard_t(_T_DOF, total) * math.sqrt((_T_DOF - 2) / _T_DOF)).tolist()
    switches = (rng.random(total) < _REGIME_SWITCH).tolist()
    volume_noise = rng.standard_normal(total).tolist()
    wick_high, wick_low = np.abs(rng.standard_normal((2, total))) * 0.5

    alpha, beta = _GARCH
    omega = (1 - alpha - beta) * _BASE_VOL**2
    k_fast, k_slow = 2 / (_MACD_FAST + 1), 2 / (_MACD_SLOW + 1)
    log_price, variance, regime = math.log(100.0), _BASE_VOL**2, 1.0
    z1 = z2 = 0.0  # the last two standardised returns
    avg_gain = avg_loss = 0.4 * _BASE_VOL
    ema_fast = ema_slow = 100.0
    volume_dev = 0.0  # log-volume deviation from its long-run level, AR(1)
    rsi, momentum = 50.0, 0.0
    log_prices = [log_price] * (_MOMENTUM_LAG + 1)
    rows = np.empty((total, 7))  # as of each close: close, volume, rsi, macd, momentum, return, sigma
    for t in range(total):
        if switches[t]:
            regime = -regime
        sigma = math.sqrt(variance)
        # Reads only what the previous row shows (plus the hidden regime): a model can learn it.
        signal = (
            0.15 * z1 - 0.07 * z2
            + 0.06 * regime
            + 0.15 * math.tanh(momentum / (sigma * math.sqrt(_MOMENTUM_LAG)))
            - 0.02 * (max(rsi - 70.0, 0.0) - max(30.0 - rsi, 0.0))
            + 0.30 * z1 * max(volume_dev / 0.35 - 1.0, 0.0)
        )
        eps = noise[t]
        ret = sigma * (max(-1.0, min(1.0, signal)) + eps)
        z2, z1 = z1, ret / sigma
        log_price += ret
        log_prices.append(log_price)
        close = math.exp(log_price)
        variance = omega + alpha * ret * ret + beta * variance
        avg_gain += (max(ret, 0.0) - avg_gain) / _RSI_PERIOD  # Wilder smoothing
        avg_loss += (max(-ret, 0.0) - avg_loss) / _RSI_PERIOD
        rsi = 100.0 * avg_gain / (avg_gain + avg_loss)
        ema_fast += k_fast * (close - ema_fast)
        ema_slow += k_slow * (close - ema_slow)
        momentum = log_price - log_prices[-1 - _MOMENTUM_LAG]
        volume_dev = 0.8 * volume_dev + 0.25 * (abs(eps) - 0.8) + 0.15 * volume_noise[t]
        rows[t] = (close, math.exp(13.0 + volume_dev), rsi, ema_fast - ema_slow, momentum, ret, sigma)

    close, volume, rsi, macd, momentum, returns, sigma = rows.T
    volatility = np.sqrt(_trailing_mean(returns**2, _VOLATILITY_SPAN))
    opens = np.concatenate([[close[0]], close[:-1]])  # no overnight gaps: each step opens at the last close
    high = np.maximum(opens, close) * np.exp(wick_high * sigma)
    low = np.minimum(opens, close) * np.exp(-wick_low * sigma)
    series = np.stack([close, high, low, volume, volatility, rsi, macd, momentum], axis=1)
    return series[WARMUP:].astype(np.float32)


def _trailing_mean(x: np.ndarray, n: int) -> np.ndarray:
    """Mean of the last `n` values at each step (fewer at the start)."""
    sums = np.cumsum(np.concatenate([[0.0], x]))
    counts = np.minimum(np.arange(1, len(x) + 1), n)
    return (sums[1:] - sums[np.arange(1, len(x) + 1) - counts]) / counts


def make_windows(series: np.ndarray, start: int, stop: int, stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Windows of `series[start:stop]` with their next-step return targets.

    A window ending at step t holds rows t-WINDOW+1 .. t; its target is
    close[t+1] / close[t] - 1, so every t+1 lies inside [start, stop) too.
    Returns X float32 [N, WINDOW, F] (a copy) and y float32 [N], oldest window first.
    """
    block = series[start:stop]
    if len(block) < WINDOW + 1:
        raise ValueError(f"need at least {WINDOW + 1} steps for one window, got {len(block)}")
    # [N, F, WINDOW] views without copying; one strided copy at the end.
    views = sliding_window_view(block[:-1], WINDOW, axis=0)[::stride]
    ends = np.arange(WINDOW - 1, len(block) - 1)[::stride]
    close = block[:, CLOSE].astype(np.float64)
    targets = close[ends + 1] / close[ends] - 1.0
    return np.ascontiguousarray(views.transpose(0, 2, 1)), targets.astype(np.float32)


def sample_windows(n: int, seed: int) -> np.ndarray:
    """`n` float32 windows [n, WINDOW, F] for tests, benchmarks and example clients."""
    return make_windows(generate_market(n + WINDOW, seed), 0, n + WINDOW)[0]
