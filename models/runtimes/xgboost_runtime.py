"""XGBoost: a Booster from its JSON model file, predicting on engineered features, through
ONNX Runtime where the converted trees agree (`models.runtimes.trees`)."""
from __future__ import annotations

from pathlib import Path

import onnx
import xgboost as xgb

from models.features import check_feature_names
from models.runtimes.trees import ONNX_OPSET, TreeRuntime, features_type


class XGBoostRuntime(TreeRuntime, framework="xgboost"):
    artifact = "model.json"

    def _load(self, artifact: Path, num_threads: int, device: str) -> None:
        # Trees stay on the CPU even when a GPU is offered: at these batch sizes the transfer
        # costs more than the traversal.
        self.booster = xgb.Booster(model_file=str(artifact))
        self.booster.set_param({"nthread": num_threads, "device": "cpu"})
        check_feature_names(self.booster.feature_names)
        # inplace_predict reads the numpy array directly; a DMatrix per call costs more than predicting.
        self._serve(self.booster.inplace_predict, num_threads)

    def _to_onnx(self) -> onnx.ModelProto:
        from onnxmltools import convert_xgboost

        unnamed = self.booster.copy()
        unnamed.feature_names = None  # the converter reads features by index ("f0", "f1", ...)
        return convert_xgboost(unnamed, initial_types=features_type(), target_opset=ONNX_OPSET)
