"""Small torch forecasters: PatchTST, an LSTM and N-HiTS.

Each takes the RAW window float32 [B, T, 8] and returns the next return [B], so an exported
ONNX graph takes raw windows too and nothing outside the net has to know its scaling. Inside
forward, the window is made scale-free (log returns in units of the window's own realised
volatility, price levels relative to the last close, volume standardised within the window,
indicators rescaled); the net predicts the next return in those units and multiplies the
volatility back in. The synthetic returns, like real ones, scale with volatility, so this is
also what makes the nets easy to train.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.data import CLOSE, HIGH, LOW, MACD, MOMENTUM, N_FEATURES, RSI, VOLATILITY, VOLUME, WINDOW

N_INPUTS = 9  # channels out of `normalise`
# Only keeps log() finite at 0: prices of a few 1e-9 are real (some tokens), and a larger floor flattened them.
_EPS = float(torch.finfo(torch.float32).tiny)


def window_scale(x: torch.Tensor) -> torch.Tensor:
    """Realised volatility of each raw window's close-to-close log returns, [B]."""
    log_close = torch.log(torch.clamp(x[:, :, CLOSE], min=_EPS))
    returns = log_close[:, 1:] - log_close[:, :-1]
    return torch.sqrt(torch.mean(returns * returns, dim=1) + 1e-12) + 1e-6


def normalise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw windows [B, T, 8] -> scale-free inputs [B, T, N_INPUTS] and the window scale [B]."""
    scale = window_scale(x)
    s = scale[:, None]
    log_close = torch.log(torch.clamp(x[:, :, CLOSE], min=_EPS))
    returns = torch.cat([torch.zeros_like(log_close[:, :1]), log_close[:, 1:] - log_close[:, :-1]], dim=1)
    log_volume = torch.log(torch.clamp(x[:, :, VOLUME], min=1.0))
    volume = (log_volume - log_volume.mean(dim=1, keepdim=True)) / (log_volume.std(dim=1, keepdim=True) + 1e-3)
    close = torch.clamp(x[:, :, CLOSE], min=_EPS)
    channels = [
        returns / s,
        (log_close - log_close[:, -1:]) / (s * math.sqrt(WINDOW)),
        torch.log(torch.clamp(x[:, :, HIGH], min=_EPS) / close) / s,
        torch.log(torch.clamp(x[:, :, LOW], min=_EPS) / close) / s,
        volume,
        x[:, :, VOLATILITY] / s - 1.0,
        (x[:, :, RSI] - 50.0) / 25.0,
        x[:, :, MACD] / close / (4.0 * s),  # MACD is in price units
        x[:, :, MOMENTUM] / (s * math.sqrt(10.0)),
    ]
    return torch.stack(channels, dim=2), scale


class Forecaster(nn.Module):
    """Raw window in, next return out; subclasses map normalised inputs to a scaled forecast."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inputs, scale = normalise(x)
        return self.forecast(inputs) * scale

    def forecast(self, inputs: torch.Tensor) -> torch.Tensor:
        """Normalised inputs [B, T, N_INPUTS] -> next return in units of the window scale, [B]."""
        raise NotImplementedError


def _zero_head(layer: nn.Linear) -> nn.Linear:
    # An untrained net then predicts exactly zero, the baseline every member must beat.
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class EncoderLayer(nn.Module):
    """Pre-norm transformer encoder layer.

    Written out rather than nn.TransformerEncoderLayer: the TorchScript ONNX exporter bakes
    the example's batch size into nn.MultiheadAttention's reshapes, and the torch.export one
    takes seconds per net. Reshaping only the trailing dimensions keeps the batch dynamic.
    """

    def __init__(self, d_model: int, heads: int, dropout: float) -> None:
        super().__init__()
        if d_model % heads:
            raise ValueError(f"heads {heads} must divide d_model {d_model}")
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 2 * d_model), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(2 * d_model, d_model))
        self.dropout = nn.Dropout(dropout)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """[B, N, d] -> [B, N, d]."""
        q, k, v = self.qkv(self.norm1(tokens)).unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4).unbind(0)
        attended = nn.functional.scaled_dot_product_attention(q, k, v)  # [B, heads, N, d / heads]
        tokens = tokens + self.dropout(self.out(attended.transpose(1, 2).flatten(2)))
        return tokens + self.dropout(self.mlp(self.norm2(tokens)))


class PatchTST(Forecaster):
    """Patch transformer (Nie et al., 2023): non-overlapping patches of the window are the tokens."""

    def __init__(self, patch: int = 16, d_model: int = 32, heads: int = 4, layers: int = 2,
                 dropout: float = 0.1) -> None:
        super().__init__()
        if WINDOW % patch:
            raise ValueError(f"patch {patch} does not divide the window {WINDOW}")
        self.patch, self.n_patches = patch, WINDOW // patch
        self.embed = nn.Linear(patch * N_INPUTS, d_model)
        self.position = nn.Parameter(torch.randn(1, self.n_patches, d_model) * 0.02)
        self.layers = nn.Sequential(*(EncoderLayer(d_model, heads, dropout) for _ in range(layers)))
        self.norm = nn.LayerNorm(d_model)
        self.head = _zero_head(nn.Linear(self.n_patches * d_model, 1))

    def forecast(self, inputs: torch.Tensor) -> torch.Tensor:
        patches = inputs.unflatten(1, (self.n_patches, self.patch)).flatten(2)  # [B, N, patch * C]
        tokens = self.layers(self.embed(patches) + self.position)
        return self.head(self.norm(tokens).flatten(1)).squeeze(-1)


class LSTMForecaster(Forecaster):
    """An LSTM over the most recent `steps` of the window, read out from its last state."""

    def __init__(self, hidden: int = 32, layers: int = 1, steps: int = 64) -> None:
        super().__init__()
        self.steps = steps
        self.lstm = nn.LSTM(N_INPUTS, hidden, layers, batch_first=True)
        self.head = _zero_head(nn.Linear(hidden, 1))

    def forecast(self, inputs: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(inputs[:, -self.steps :])
        return self.head(out[:, -1]).squeeze(-1)


class NHiTSBlock(nn.Module):
    """Max-pools the input at one rate, then an MLP gives a backcast of the returns and a forecast."""

    def __init__(self, pool: int, hidden: int, window: int, dropout: float) -> None:
        super().__init__()
        self.pool, self.n_points = pool, window // pool
        self.mlp = nn.Sequential(
            nn.Linear(self.n_points * N_INPUTS, hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.ReLU(),
        )
        self.backcast_head = nn.Linear(hidden, self.n_points)
        self.forecast_head = _zero_head(nn.Linear(hidden, 1))

    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, C, T] -> backcast of the return channel [B, T] (piecewise constant), forecast [B]."""
        pooled = nn.functional.max_pool1d(inputs, self.pool, self.pool) if self.pool > 1 else inputs
        hidden = self.mlp(pooled.flatten(1))
        coarse = self.backcast_head(hidden)  # [B, T / pool]: one value per pooled step
        backcast = coarse.unsqueeze(-1).expand(-1, -1, self.pool).flatten(1)
        return backcast, self.forecast_head(hidden).squeeze(-1)


class NHiTS(Forecaster):
    """N-HiTS (Challu et al., 2023), small: stacked blocks from coarse to fine pooling.

    Each block sees what the blocks before it did not explain (the return channel minus their
    backcasts, the other channels as covariates) and adds its forecast to the total.
    """

    def __init__(self, pools: tuple[int, ...] = (16, 4, 1), hidden: int = 128, lookback: int = WINDOW,
                 dropout: float = 0.1) -> None:
        super().__init__()
        if any(lookback % p for p in pools):
            raise ValueError(f"every pool in {pools} must divide the lookback {lookback}")
        self.lookback = lookback
        self.blocks = nn.ModuleList(NHiTSBlock(p, hidden, lookback, dropout) for p in pools)

    def forecast(self, inputs: torch.Tensor) -> torch.Tensor:
        channels = inputs[:, -self.lookback :].transpose(1, 2)  # [B, C, T]
        residual, covariates = channels[:, :1], channels[:, 1:]
        total = torch.zeros_like(channels[:, 0, 0])
        for block in self.blocks:
            backcast, forecast = block(torch.cat([residual, covariates], dim=1))
            residual = residual - backcast.unsqueeze(1)
            total = total + forecast
        return total


NETS: dict[str, type[Forecaster]] = {"patchtst": PatchTST, "lstm": LSTMForecaster, "nhits": NHiTS}
ONNX_OPSET = 17
ONNX_INPUT, ONNX_OUTPUT = "window", "next_return"


def build_net(arch: str, hparams: dict[str, Any]) -> Forecaster:
    """Construct a net from its registry name and plain (JSON) hyperparameters."""
    if arch not in NETS:
        raise ValueError(f"unknown architecture {arch!r}; known: {sorted(NETS)}")
    # JSON has no tuples; constructors take tuples for sequences.
    return NETS[arch](**{k: tuple(v) if isinstance(v, list) else v for k, v in hparams.items()})


def export_onnx(net: nn.Module, path: str | Path, batch: int = 2) -> None:
    """Write `net` as ONNX taking raw windows [batch, T, F], the batch dimension dynamic."""
    net.eval()
    example = torch.full((batch, WINDOW, N_FEATURES), 100.0)
    with warnings.catch_warnings():
        # torch 2.13 flags the TorchScript exporter as legacy; the torch.export one it recommends
        # takes seconds per net instead of a fraction of one, and the two graphs agree to 1e-7.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        # The LSTM's warnings about the batch size: it passes no initial state, so ONNX's LSTM
        # starts from zeros at any batch size (the training's parity check covers the holdout).
        warnings.filterwarnings("ignore", message=".*(LSTM|Converting a tensor to a Python boolean).*")
        torch.onnx.export(
            net, (example,), str(path), dynamo=False, opset_version=ONNX_OPSET,
            input_names=[ONNX_INPUT], output_names=[ONNX_OUTPUT],
            dynamic_axes={ONNX_INPUT: {0: "batch"}, ONNX_OUTPUT: {0: "batch"}},
        )
