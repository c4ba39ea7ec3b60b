"""What the tree runtimes share: engineered features in, predictions from ONNX Runtime's
TreeEnsemble kernel on trees converted at load from the framework's own verified model, when
the two agree.

On one engineered row XGBoost's `inplace_predict` of 85 trees cost 235 µs and LightGBM's
`predict` 40 µs, nearly all of it per-call overhead; ONNX Runtime 9 µs for either (64 rows:
280 and 84 against 50 and 30 µs; `python -m bench.tree_engines`, BENCHMARKS.md). The converted
trees serve only if they predict what the framework predicts on sample windows; otherwise the
framework serves.
"""
from __future__ import annotations

import logging
from abc import abstractmethod
from collections.abc import Callable

import numpy as np
import onnx

from models.data import sample_windows
from models.features import FEATURE_NAMES, engineer
from models.runtimes.base import Runtime

logger = logging.getLogger(__name__)
FeaturesPredict = Callable[[np.ndarray], np.ndarray]  # engineered features float32 [B, n] -> [B]
CHECK_WINDOWS = 256
ONNX_OPSET = 15


def features_type() -> list[tuple[str, object]]:
    """The converters' input: float32 engineered features [B, len(FEATURE_NAMES)]."""
    from onnxmltools.convert.common.data_types import FloatTensorType

    return [("features", FloatTensorType([None, len(FEATURE_NAMES)]))]


class TreeRuntime(Runtime):
    """A tree ensemble over `engineer`ed features; subclasses load the booster, then `_serve` it."""

    framework_predict: FeaturesPredict  # the framework's own prediction on engineered features
    features_predict: FeaturesPredict  # the one serving: ONNX Runtime's where it agrees, else the framework's

    @abstractmethod
    def _to_onnx(self) -> onnx.ModelProto:
        """The loaded trees as an ONNX model with `features_type()` input."""

    def _serve(self, native: FeaturesPredict, num_threads: int) -> None:
        """Predict with ONNX Runtime on `_to_onnx()` where it agrees with `native` on
        CHECK_WINDOWS sample windows to float32 rounding, else with `native`."""
        from models.runtimes.onnx_runtime import session

        self.framework_predict = self.features_predict = native
        features = engineer(sample_windows(CHECK_WINDOWS, seed=1))
        try:
            trees = session(self._to_onnx().SerializeToString(), num_threads)
            input_name = trees.get_inputs()[0].name

            def converted(batch: np.ndarray) -> np.ndarray:
                return trees.run(None, {input_name: batch})[0]

            expected = np.asarray(native(features), dtype=np.float64).ravel()
            got = np.asarray(converted(features), dtype=np.float64).ravel()
        except Exception:  # noqa: BLE001 - a converter or session failure leaves the framework serving
            logger.warning("%s: converting the trees to ONNX failed; the framework predicts", self._name, exc_info=True)
            return
        tolerance = 1e-6 * max(1.0, float(np.abs(expected).max()))
        if got.shape != expected.shape or not np.allclose(got, expected, rtol=1e-5, atol=tolerance):
            logger.warning("%s: the trees converted to ONNX predict otherwise; the framework predicts", self._name)
            return
        self.features_predict, self.engine = converted, "onnxruntime"

    def _predict(self, batch: np.ndarray) -> np.ndarray:
        return self.features_predict(engineer(batch))
