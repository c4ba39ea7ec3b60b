"""One generic model deployment, bound once per (model, version) as `<model>-<version>`."""
from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
from ray import serve

from models.repository import load_runtime

logger = logging.getLogger("ray.serve")


@serve.deployment
class ModelDeployment:
    """Loads one version from the model repository (SHA-256 checked, warmed up) and predicts.

    Calls from several routers that arrive together are merged by `serve.batch` into one
    runtime call; a call that is already a full batch goes straight through.
    """

    def __init__(self, model_root: str, model: str, version: str, num_threads: int, device: str,
                 max_batch_rows: int) -> None:
        self.runtime = load_runtime(model_root, model, version, num_threads=num_threads, device=device)
        self.name = f"{model}-{version}"
        self.max_batch_rows = max_batch_rows
        self._batched_predict.set_max_batch_size(max_batch_rows)
        logger.info("%s loaded on %s with %d framework threads", self.name, self.runtime.device, num_threads)

    async def predict(self, windows: np.ndarray) -> np.ndarray:
        """float32 windows [B, T, F] -> float32 predictions [B]."""
        if len(windows) >= self.max_batch_rows:
            return self.runtime.predict(windows)
        return await self._batched_predict(windows)

    @serve.batch(max_batch_size=256, batch_wait_timeout_s=0.0, batch_size_fn=lambda items: sum(len(w) for w in items))
    async def _batched_predict(self, blocks: list[np.ndarray]) -> list[np.ndarray]:
        if len(blocks) == 1:
            return [self.runtime.predict(blocks[0])]
        outputs = self.runtime.predict(np.concatenate(blocks))
        return np.split(outputs, np.cumsum([len(b) for b in blocks[:-1]]))

    def info(self) -> dict[str, Any]:
        """What this replica serves: its manifest and the device it really runs on."""
        return {"deployment": self.name, "device": self.runtime.device, "pid": os.getpid(),
                "manifest": self.runtime.manifest.model_dump(mode="json")}
