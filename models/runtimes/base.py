"""What every framework runtime shares, in the style of KServe / MLServer model runtimes.

A runtime is created empty, `load`ed from a verified version directory, then `predict`s
float32 [B, T, F] -> float32 [B]. Subclasses implement `_load` and `_predict` only; input
checks, error wrapping and warm-up live here, once.
"""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from models.data import sample_windows
from models.errors import InputShapeError, ModelLoadError, ModelPredictError

if TYPE_CHECKING:
    from models.repository import Manifest

DEVICES = ("cpu", "cuda")
FLOAT32_MAX = float(np.finfo(np.float32).max)
# framework -> runtime class, filled as each runtime module is imported (see runtime_class).
RUNTIMES: dict[str, type[Runtime]] = {}


class Runtime(ABC):
    """One loaded model version."""

    framework: ClassVar[str]
    artifact: ClassVar[str]  # the file in the version directory this runtime loads
    device: str = "cpu"  # where it really runs, which may differ from the device asked for
    engine: str  # the library computing predictions: the framework's own unless set (models.runtimes.trees)
    manifest: Manifest

    def __init_subclass__(cls, framework: str | None = None, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if framework is not None:
            cls.framework = cls.engine = framework
            RUNTIMES[framework] = cls

    def load(self, model_dir: Path, manifest: Manifest, num_threads: int = 1, device: str = "cpu") -> None:
        """Load the artifact from `model_dir`, whose SHA-256s the caller has verified."""
        if self.artifact not in manifest.artifacts:
            raise ModelLoadError(f"{type(self).__name__} loads {self.artifact}; "
                                 f"the manifest has {sorted(manifest.artifacts)}")
        if device not in DEVICES or num_threads < 1:
            raise ModelLoadError(f"device must be one of {DEVICES} and num_threads >= 1, got {device!r}, {num_threads}")
        self.manifest = manifest
        self._shape = (manifest.input.window, manifest.input.n_features)
        # No bounds: float32's finite range, so only NaN and inf are refused (NaN fails every comparison).
        self._bounds = manifest.output.bounds or (-FLOAT32_MAX, FLOAT32_MAX)
        self.rows_refused = 0  # windows given no prediction (non-finite or out of bounds) since loading
        self._load(Path(model_dir) / self.artifact, num_threads, device)

    @abstractmethod
    def _load(self, artifact: Path, num_threads: int, device: str) -> None:
        """Load the framework's model from `artifact`; set `device` if not CPU."""

    @abstractmethod
    def _predict(self, batch: np.ndarray) -> np.ndarray:
        """C-contiguous float32 [B, T, F] -> [B] (any float dtype, any [B]-sized shape)."""

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """float32 windows [B, T, F] -> float32 next returns [B].

        InputShapeError for anything else; ModelPredictError wraps framework failures. A window
        the model gives no finite prediction for (extreme inputs overflow a net), or one outside
        the manifest's output bounds, gets NaN, its own row only: a call carries many requests'
        windows, and one's should not fail the rest.
        """
        try:
            batch = np.ascontiguousarray(batch, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise InputShapeError(f"{self._name}: the batch is not numeric: {exc}") from None
        if batch.ndim != 3 or batch.shape[1:] != self._shape or len(batch) == 0:
            raise InputShapeError(f"{self._name}: expected a batch [B>=1, {self._shape[0]}, {self._shape[1]}], "
                                  f"got {list(batch.shape)}")
        try:
            out = np.asarray(self._predict(batch), dtype=np.float32).reshape(len(batch))
        except Exception as exc:  # noqa: BLE001 - no framework exception leaves a runtime unwrapped
            raise ModelPredictError(f"{self._name}: {type(exc).__name__}: {exc}") from exc
        # NaN alone means "no prediction" downstream: inf and values past the bounds become it too.
        low, high = self._bounds
        if not (out.min() >= low and out.max() <= high):  # a NaN fails both: min and max propagate it
            refused = ~((out >= low) & (out <= high))
            out[refused] = np.nan
            self.rows_refused += int(refused.sum())
        return out

    def warm_up(self, batch_sizes: tuple[int, ...] = (1, 32)) -> None:
        """Predict once per batch size: first calls allocate and plan, and should not meet a request."""
        windows = sample_windows(max(batch_sizes), seed=0)
        for size in batch_sizes:
            if np.isnan(self.predict(windows[:size])).any():  # ordinary windows: broken weights
                raise ModelLoadError(f"{self._name}: no prediction for ordinary windows (non-finite or out of bounds)")

    @property
    def _name(self) -> str:
        return f"{self.manifest.name}/{self.manifest.version}"


def non_finite_windows(windows: np.ndarray) -> np.ndarray | None:
    """Which windows hold a NaN or an infinity (bool [B]), or None where none does: for callers
    that did not validate their windows (the router does), whose such windows should get NaN
    ("no prediction") without reaching the model: a tree predicted a confident 0.00275 for a
    window of NaN. Checked as the runtime reads them: a float64 past float32's range is inf there."""
    with np.errstate(over="ignore"):  # overflows are what is looked for
        windows = np.asarray(windows, dtype=np.float32)
        if np.isfinite(windows.sum()):  # one pass; a sum past float32 alone is checked row by row
            return None
    bad = ~np.isfinite(windows).all(axis=(1, 2))
    return bad if bad.any() else None


def runtime_class(framework: str) -> type[Runtime]:
    """The runtime class for `framework`, importing `models.runtimes.<framework>_runtime` on first use.

    Importing on demand means a replica pays for (and needs) only its own framework: an ONNX
    member never imports torch, a tree member never imports onnxruntime.
    """
    if framework not in RUNTIMES:
        try:
            importlib.import_module(f"{__package__}.{framework}_runtime")
        except ModuleNotFoundError as exc:
            raise ModelLoadError(f"no runtime for framework {framework!r}: {exc}") from exc
    return RUNTIMES[framework]
