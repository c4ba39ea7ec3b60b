"""LightGBM: a Booster from its text model file, predicting on engineered features, through
ONNX Runtime where the converted trees agree (`models.runtimes.trees`)."""
from __future__ import annotations

from collections import defaultdict
from functools import partial
from pathlib import Path

import lightgbm as lgb
import numpy as np
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

        model = convert_lightgbm(self.booster, initial_types=features_type(), target_opset=ONNX_OPSET, zipmap=False)
        compare_as_lightgbm(model, self.booster)
        return model


def compare_as_lightgbm(model: onnx.ModelProto, booster: lgb.Booster) -> None:
    """Lower each `<=` threshold the converter rounded up to float32 by one step. LightGBM compares
    a feature, widened to float64, with its float64 threshold; ONNX Runtime compares float32 with
    float32: a feature equal to a threshold rounded up went left there and right in LightGBM (one
    window in 60,000, its answer 4% off). One step down, `x <= t` and `x <= threshold` agree for
    every float32 x, since no float32 lies between."""
    rounded: dict[tuple[int, np.float32], set[float]] = defaultdict(set)  # (feature, float32) -> thresholds
    nodes = [tree["tree_structure"] for tree in booster.dump_model()["tree_info"]]
    while nodes:
        node = nodes.pop()
        if "split_feature" in node:
            if node["decision_type"] == "<=":
                rounded[(node["split_feature"], np.float32(node["threshold"]))].add(node["threshold"])
            nodes += [node["left_child"], node["right_child"]]
    for node in model.graph.node:
        if node.op_type != "TreeEnsembleRegressor":
            continue
        attributes = {attribute.name: attribute for attribute in node.attribute}
        values = attributes["nodes_values"].floats
        for i, (feature, mode) in enumerate(zip(attributes["nodes_featureids"].ints, attributes["nodes_modes"].strings)):
            value = np.float32(values[i])
            thresholds = rounded.get((feature, value))
            # Thresholds both sides of one float32 (never seen) are left as converted.
            if mode == b"BRANCH_LEQ" and thresholds and max(thresholds) < float(value):  # in float64
                values[i] = float(np.nextafter(value, np.float32(-np.inf)))
