"""XGBoost from its JSON model file, predicting in place on engineered numpy features."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import xgboost as xgb

from models.features import engineer
from models.runtimes.base import Runtime

ARTIFACT = "model.json"


class XGBoostRuntime(Runtime):
    def _load(self, directory: Path, num_threads: int, device: str) -> None:
        self.booster = xgb.Booster(params={"nthread": num_threads})
        self.booster.load_model(str(directory / ARTIFACT))

    def _predict(self, batch: np.ndarray) -> np.ndarray:
        # inplace_predict skips building a DMatrix, which costs milliseconds per call.
        return self.booster.inplace_predict(engineer(batch))
