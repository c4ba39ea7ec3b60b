"""XGBoost: a Booster from its JSON model file, predicting in place on engineered features."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import xgboost as xgb

from models.features import check_feature_names, engineer
from models.runtimes.base import Runtime


class XGBoostRuntime(Runtime, framework="xgboost"):
    artifact = "model.json"

    def _load(self, artifact: Path, num_threads: int, device: str) -> None:
        # Trees stay on the CPU even when a GPU is offered: at these batch sizes the transfer
        # costs more than the traversal.
        self.booster = xgb.Booster(model_file=str(artifact))
        self.booster.set_param({"nthread": num_threads, "device": "cpu"})
        check_feature_names(self.booster.feature_names)

    def _predict(self, batch: np.ndarray) -> np.ndarray:
        # inplace_predict reads the numpy array directly; building a DMatrix per call costs more
        # than predicting.
        return self.booster.inplace_predict(engineer(batch))
