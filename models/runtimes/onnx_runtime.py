"""ONNX Runtime for nets exported from torch: CUDA when asked for and available, else CPU."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from models.runtimes.base import Runtime

_PROVIDERS = {"cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}


def session(model: Path | bytes, num_threads: int, device: str = "cpu") -> ort.InferenceSession:
    """A session on `num_threads` framework threads; on CUDA when asked for and available."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = num_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Replicas share few cores: idle pool threads must sleep, not spin on a neighbour's core.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = [_PROVIDERS["cpu"]]
    if device == "cuda" and _PROVIDERS["cuda"] in ort.get_available_providers():
        providers.insert(0, _PROVIDERS["cuda"])
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), options, providers=providers)


class ONNXRuntime(Runtime, framework="onnx"):
    artifact = "model.onnx"

    def _load(self, artifact: Path, num_threads: int, device: str) -> None:
        self.session = session(artifact, num_threads, device)
        # The session silently drops a provider that fails to initialise: report the one it kept.
        self.device = "cuda" if self.session.get_providers()[0] == _PROVIDERS["cuda"] else "cpu"
        self.input_name = self.session.get_inputs()[0].name

    def _predict(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: batch})[0]
