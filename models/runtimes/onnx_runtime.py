"""ONNX Runtime for nets exported from torch; CUDA when asked for and available."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from models.runtimes.base import Runtime

ARTIFACT = "model.onnx"


class ONNXRuntime(Runtime):
    def _load(self, directory: Path, num_threads: int, device: str) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        providers = ["CPUExecutionProvider"]
        if device == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(directory / ARTIFACT), options, providers=providers)
        self.device = "cuda" if self.session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
        self.input_name = self.session.get_inputs()[0].name

    def _predict(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: batch})[0]
