"""Small torch forecasters. Each takes the raw window [B, T, 8] and normalises inside forward,
so the exported ONNX graph takes raw windows too; each outputs the next return [B]."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

TARGET_SCALE = 100.0  # nets learn returns in percent; forward divides back


def normalise(x: torch.Tensor) -> torch.Tensor:
    """Scale-free inputs: prices as log ratios to the last close, volume standardised per window."""
    last_close = x[:, -1:, 0:1]
    prices = torch.log(torch.clamp(x[:, :, 0:3], min=1e-6) / torch.clamp(last_close, min=1e-6)) * 100.0
    log_volume = torch.log(torch.clamp(x[:, :, 3:4], min=1.0))
    volume = (log_volume - log_volume.mean(dim=1, keepdim=True)) / (log_volume.std(dim=1, keepdim=True) + 1e-3)
    volatility = x[:, :, 4:5] * 100.0
    rsi = (x[:, :, 5:6] - 50.0) / 25.0
    macd_momentum = x[:, :, 6:8] * 100.0
    return torch.cat([prices, volume, volatility, rsi, macd_momentum], dim=2)


class PatchTST(nn.Module):
    """Patch-based transformer: the window cut into patches, each a token."""

    def __init__(self, window: int = 128, n_features: int = 8, patch: int = 16, d_model: int = 32,
                 heads: int = 4, layers: int = 2) -> None:
        super().__init__()
        self.patch = patch
        self.embed = nn.Linear(patch * n_features, d_model)
        self.position = nn.Parameter(torch.zeros(1, window // patch, d_model))
        layer = nn.TransformerEncoderLayer(d_model, heads, 2 * d_model, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = normalise(x)
        b, t, f = z.shape
        tokens = self.embed(z.reshape(b, t // self.patch, self.patch * f)) + self.position
        return self.head(self.encoder(tokens).mean(dim=1)).squeeze(-1) / TARGET_SCALE


class LSTMForecaster(nn.Module):
    def __init__(self, n_features: int = 8, hidden: int = 32, layers: int = 1, steps: int = 64) -> None:
        super().__init__()
        self.steps = steps  # the recent part of the window the recurrence reads
        self.lstm = nn.LSTM(n_features, hidden, layers, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(normalise(x)[:, -self.steps :])
        return self.head(out[:, -1]).squeeze(-1) / TARGET_SCALE


class NHiTS(nn.Module):
    """N-HiTS-style stacks: each pools the input at its own rate and adds to the forecast."""

    def __init__(self, window: int = 128, n_features: int = 8, pools: tuple[int, ...] = (8, 4, 1),
                 hidden: int = 128) -> None:
        super().__init__()
        self.pools = nn.ModuleList(nn.AvgPool1d(p, p) for p in pools)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(window // p * n_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                          nn.ReLU(), nn.Linear(hidden, 1))
            for p in pools
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = normalise(x).transpose(1, 2)  # [B, F, T]
        forecast = torch.zeros(x.shape[0], device=x.device)
        for pool, block in zip(self.pools, self.blocks):
            forecast = forecast + block(pool(z).flatten(1)).squeeze(-1)
        return forecast / TARGET_SCALE


NETS: dict[str, type[nn.Module]] = {"patchtst": PatchTST, "lstm": LSTMForecaster, "nhits": NHiTS}


def build_net(arch: str, hparams: dict[str, Any]) -> nn.Module:
    return NETS[arch](**{k: tuple(v) if isinstance(v, list) else v for k, v in hparams.items()})


def export_onnx(net: nn.Module, path: str, example: torch.Tensor) -> None:
    """ONNX graph of `net` taking raw windows, with a dynamic batch dimension."""
    torch.onnx.export(
        net, (example,), path, dynamo=False, input_names=["window"], output_names=["next_return"],
        dynamic_axes={"window": {0: "batch"}, "next_return": {0: "batch"}}, opset_version=17,
    )
