"""The runtime protocol: load in the constructor, then predict float32 [B, T, F] -> float32 [B]."""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from models.errors import InputShapeError, ModelPredictError

if TYPE_CHECKING:
    from models.repository import Manifest


class Runtime(ABC):
    """One loaded model version. Subclasses implement `_load` and `_predict`, nothing else."""

    device = "cpu"

    def __init__(self, directory: Path, manifest: Manifest, num_threads: int, device: str) -> None:
        self.manifest = manifest
        self.shape = (manifest.input.window, manifest.input.n_features)
        self._load(directory, num_threads, device)

    @abstractmethod
    def _load(self, directory: Path, num_threads: int, device: str) -> None: ...

    @abstractmethod
    def _predict(self, batch: np.ndarray) -> np.ndarray: ...

    def predict(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch, dtype=np.float32)
        if batch.ndim != 3 or batch.shape[1:] != self.shape:
            raise InputShapeError(f"expected a batch [B, {self.shape[0]}, {self.shape[1]}], got {list(batch.shape)}")
        try:
            out = self._predict(batch)
        except Exception as exc:  # noqa: BLE001 - wrap every framework error in ours
            raise ModelPredictError(f"{self.manifest.name}/{self.manifest.version}: {type(exc).__name__}: {exc}") from exc
        return np.asarray(out, dtype=np.float32).reshape(len(batch))

    def warm_up(self) -> None:
        """First calls are slow in several frameworks: pay that at load, not on a request."""
        for size in (1, 32):
            self.predict(np.ones((size, *self.shape), dtype=np.float32) * 100)
