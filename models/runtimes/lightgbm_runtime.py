"""LightGBM: a Booster from its text model file, predicting on engineered features, through
ONNX Runtime where the converted trees agree (`models.runtimes.trees`)."""
from __future__ import annotations

from functools import partial
from pathlib import Path

import lightgbm as lgb
import onnx

from models.features import check_feature_names
from models.runtimes.trees import ONNX_OPSET, TreeRuntime, features_type


class LightGBMRuntime(TreeRuntime, framework="lightgbm"):
    artifact = "model.txt"

    def _load(self, artifact: Path, num_threads: int, device: str) -> None:
        self.booster = lgb.Booster(model_file=str(artifact))
        check_feature_names(self.booster.feature_name())
        self._serve(partial(self.booster.predict, num_threads=num_threads), num_threads)

    def _to_onnx(self) -> onnx.ModelProto:
        from onnxmltools import convert_lightgbm

        return convert_lightgbm(self.booster, initial_types=features_type(), target_opset=ONNX_OPSET, zipmap=False)
