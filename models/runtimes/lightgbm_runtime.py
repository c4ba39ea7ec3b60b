"""LightGBM from its text model file, predicting on engineered numpy features."""
from __future__ import annotations

from pathlib import Path

import lightgbm as lgb
import numpy as np

from models.features import engineer
from models.runtimes.base import Runtime

ARTIFACT = "model.txt"


class LightGBMRuntime(Runtime):
    def _load(self, directory: Path, num_threads: int, device: str) -> None:
        self.booster = lgb.Booster(model_file=str(directory / ARTIFACT))
        self.num_threads = num_threads

    def _predict(self, batch: np.ndarray) -> np.ndarray:
        return self.booster.predict(engineer(batch), num_threads=self.num_threads)
