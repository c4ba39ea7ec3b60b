"""Torch eager: the net rebuilt from the manifest's architecture, weights from a state dict.

Serves a net on CUDA (`models.repository.serving_framework`); ONNX Runtime is faster on CPU.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from models.nets import build_net
from models.repository import TORCH_WEIGHTS
from models.runtimes.base import Runtime


class TorchRuntime(Runtime, framework="torch"):
    artifact = TORCH_WEIGHTS

    def _load(self, artifact: Path, num_threads: int, device: str) -> None:
        torch.set_num_threads(num_threads)  # process-wide: one replica, one model
        self.device = "cuda" if device == "cuda" and torch.cuda.is_available() else "cpu"
        self.net = build_net(self.manifest.architecture, self.manifest.hparams)
        # weights_only: tensors and containers only, never arbitrary pickled objects.
        state = torch.load(artifact, map_location=self.device, weights_only=True)
        self.net.load_state_dict(state)
        self.net.to(self.device).eval()

    def _predict(self, batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            # A read-only array (as Ray hands them over) must be copied before torch wraps it.
            tensor = torch.from_numpy(batch if batch.flags.writeable else batch.copy())
            return self.net(tensor.to(self.device)).cpu().numpy()
