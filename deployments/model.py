"""One generic model deployment, bound once per (model, version) as `<model>-<version>`.

Reached through a Serve handle (`predict`), over HTTP (`__call__`) when the member version is
its own application with a route prefix and the router has `member_url`, or over the replica's
own direct channel (`ensemble.channel`), whose address `info()` reports.
"""
from __future__ import annotations

import logging
import os
from functools import partial
from typing import Any

import numpy as np
import ray
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from deployments.autoscaling import CPU_BUSY, UNSEEN_IN_FLIGHT, CpuMeter
from deployments.heap import freeze_loaded
from ensemble.batching import predict_blocks, predict_sliced
from ensemble.channel import ChannelServer, merged_model_calls
from ensemble.wire import CONTENT_TYPE, WireError, decode_windows, encode
from models.repository import load_runtime
from models.runtimes.base import non_finite_windows

logger = logging.getLogger("ray.serve")


@serve.deployment
class ModelDeployment:
    """Loads one version from the model repository (SHA-256 checked, warmed up) and predicts.

    Calls that arrive together are merged into one runtime call: over the direct channel by
    `merged_model_calls`, through Serve's handle or HTTP path by `serve.batch`; a call that is
    already a full batch goes straight through, in slices of `max_batch_rows` at most.
    """

    async def __init__(self, model_root: str, model: str, version: str, num_threads: int, device: str,
                       max_batch_rows: int) -> None:
        self.runtime = load_runtime(model_root, model, version, num_threads=num_threads, device=device)
        self.name = f"{model}-{version}"
        self.max_batch_rows = max_batch_rows
        self._batched_predict.set_max_batch_size(max_batch_rows)
        self._predict = partial(predict_sliced, self.runtime.predict, max_rows=max_batch_rows)
        contract = self.runtime.manifest.input
        self.channel = ChannelServer(merged_model_calls(
            partial(decode_windows, window=contract.window, n_features=contract.n_features),
            self._predict, max_batch_rows))
        self.channel_endpoint = (await self.channel.start(ray.util.get_node_ip_address()))[:2]  # host, port
        self.node_id = ray.get_runtime_context().get_node_id()
        self.cpu = CpuMeter(num_threads)
        freeze_loaded()
        logger.info("%s loaded in %s (predicting with %s) on %s with %d framework threads; channel on %s:%d",
                    self.name, self.runtime.framework, self.runtime.engine, self.runtime.device, num_threads,
                    *self.channel_endpoint)

    async def predict(self, windows: np.ndarray) -> np.ndarray:
        """float32 windows [B, T, F] -> float32 predictions [B]; NaN for a window with NaN or inf
        in it. Handle and HTTP callers are not only the router, which validates its windows."""
        bad = non_finite_windows(windows)
        if bad is not None:
            out = np.full(len(windows), np.nan, dtype=np.float32)
            if not bad.all():
                out[~bad] = await self.predict(windows[~bad])
            self.runtime.rows_refused += int(bad.sum())
            return out
        if len(windows) >= self.max_batch_rows:
            return self._predict(windows)
        return await self._batched_predict(windows)

    @serve.batch(max_batch_size=256, batch_wait_timeout_s=0.0, batch_size_fn=lambda items: sum(len(w) for w in items))
    async def _batched_predict(self, blocks: list[np.ndarray]) -> list[np.ndarray]:
        return predict_blocks(self._predict, blocks)

    async def __call__(self, request: Request) -> Response:
        """POST: raw float32 windows in, raw float32 predictions out (`ensemble.wire`). GET: info()."""
        if request.method == "GET":
            return JSONResponse(self.info())
        contract = self.runtime.manifest.input
        try:
            windows = decode_windows(await request.body(), contract.window, contract.n_features)
        except WireError as exc:
            return JSONResponse({"detail": str(exc)}, status_code=400)
        return Response(encode(await self.predict(windows)), media_type=CONTENT_TYPE)

    def record_replica_metadata(self) -> dict[str, Any]:
        """Published by Serve with this replica to every handle: where its direct channel listens,
        and on which node (a caller there shares memory with it, `ensemble.arena`)."""
        return {"channel": list(self.channel_endpoint), "node_id": self.node_id}

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Calls over the channel (Serve counts only its own requests) and how busy the framework
        threads are, for `deployments.autoscaling`."""
        return {UNSEEN_IN_FLIGHT: self.channel.load.mean(), CPU_BUSY: self.cpu.busy()}

    def info(self) -> dict[str, Any]:
        """What this replica serves: its manifest, its runtime, the library predicting (`engine`)
        and the device it really runs on."""
        return {"deployment": self.name, "runtime": self.runtime.framework, "engine": self.runtime.engine,
                "device": self.runtime.device, "pid": os.getpid(), "channel": list(self.channel_endpoint),
                "channel_calls": self.channel.answered,
                "channel_calls_in_shared_memory": self.channel.answered_in_arena,
                "rows_refused": self.runtime.rows_refused,
                "manifest": self.runtime.manifest.model_dump(mode="json")}
