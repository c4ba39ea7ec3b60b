"""(5) BentoML peer: five member services (adaptive batching) composed by one ensemble service.

Runs in its own virtualenv (bench/.venvs/bentoml; BentoML's pins conflict with the project's):
  BENCH_REPO=<repo> bench/.venvs/bentoml/bin/bentoml serve bench.apps.bento_service:Ensemble \
      --host 127.0.0.1 --port N
Each member is its own BentoML service (its own worker process) loading the same trained
version with the project's `models.repository.load_runtime`; the front service parses the
window, calls the five with `asyncio.gather` and averages, as the naive Ray fan-out does.
"""
from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

REPO = Path(os.environ.get("BENCH_REPO", Path(__file__).resolve().parents[2]))
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import bentoml  # noqa: E402
import numpy as np  # noqa: E402

from bench.apps import MEMBERS  # noqa: E402
MODEL_ROOT = os.environ.get("BENCH_MODEL_ROOT", str(REPO / "model_repo"))
THREADS = int(os.environ.get("BENCH_THREADS", "1"))


def _member_service(model: str, version: str):
    class Member:
        def __init__(self) -> None:
            from models.repository import load_runtime

            self.runtime = load_runtime(MODEL_ROOT, model, version, num_threads=THREADS)

        @bentoml.api(batchable=True, batch_dim=0, max_batch_size=256, max_latency_ms=1000)
        def predict(self, windows: np.ndarray) -> np.ndarray:
            return self.runtime.predict(windows)

    Member.__name__ = Member.__qualname__ = f"{model.capitalize()}{version.upper()}"
    return bentoml.service(name=f"{model}-{version}", workers=1)(Member)


XgboostV1, LightgbmV1, PatchtstV1, LstmV1, NhitsV1 = (_member_service(m, v) for m, v in MEMBERS)


@bentoml.service(name="ensemble", workers=1, traffic={"timeout": 30})
class Ensemble:
    xgboost = bentoml.depends(XgboostV1)
    lightgbm = bentoml.depends(LightgbmV1)
    patchtst = bentoml.depends(PatchtstV1)
    lstm = bentoml.depends(LstmV1)
    nhits = bentoml.depends(NhitsV1)

    @bentoml.api(route="/v1/predict")
    async def predict(self, window: list[list[float]], request_id: str = "") -> dict:
        windows = np.asarray(window, dtype=np.float32)[None, -128:]
        names = [f"{m}-{v}" for m, v in MEMBERS]
        members = (self.xgboost, self.lightgbm, self.patchtst, self.lstm, self.nhits)
        outputs = await asyncio.gather(*(m.to_async.predict(windows) for m in members))
        predictions = {name: float(np.asarray(out).reshape(-1)[0]) for name, out in zip(names, outputs)}
        return {"request_id": request_id, "prediction": float(np.mean(list(predictions.values()))),
                "members": predictions}
