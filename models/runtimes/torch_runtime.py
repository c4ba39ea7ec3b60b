"""Torch eager, the net rebuilt from the manifest and its weights loaded with weights_only."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from models.nets import build_net
from models.runtimes.base import Runtime

ARTIFACT = "weights.pt"


class TorchRuntime(Runtime):
    def _load(self, directory: Path, num_threads: int, device: str) -> None:
        torch.set_num_threads(num_threads)
        self.device = "cuda" if device == "cuda" and torch.cuda.is_available() else "cpu"
        self.net = build_net(self.manifest.architecture, self.manifest.hparams)
        self.net.load_state_dict(torch.load(directory / ARTIFACT, map_location=self.device, weights_only=True))
        self.net.to(self.device).eval()

    def _predict(self, batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.net(torch.from_numpy(batch).to(self.device)).cpu().numpy()
