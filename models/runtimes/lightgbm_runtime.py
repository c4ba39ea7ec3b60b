"""LightGBM: a Booster from its text model file, predicting on engineered features."""
from __future__ import annotations

from pathlib import Path

import lightgbm as lgb
import numpy as np

from models.features import check_feature_names, engineer
from models.runtimes.base import Runtime


class LightGBMRuntime(Runtime, framework="lightgbm"):
    artifact = "model.txt"

    def _load(self, artifact: Path, num_threads: int, device: str) -> None:
        self.booster = lgb.Booster(model_file=str(artifact))
        self.num_threads = num_threads
        check_feature_names(self.booster.feature_name())

    def _predict(self, batch: np.ndarray) -> np.ndarray:
        return self.booster.predict(engineer(batch), num_threads=self.num_threads)
