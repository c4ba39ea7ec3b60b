"""The model repository: `<root>/<model>/<version>/` holding artifacts and a `manifest.json`.

A version exists once its manifest does: artifacts are moved in first and the manifest is
written last (atomically), so a reader never sees a manifest without its artifacts. Every
artifact's SHA-256 is checked against the manifest before anything is loaded, and nothing is
unpickled: trees are XGBoost JSON / LightGBM text, nets ONNX or a weights-only state dict.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from models.data import FEATURES, N_FEATURES, WINDOW
from models.errors import ArtifactIntegrityError, ModelLoadError
from models.runtimes.base import Runtime, runtime_class

Framework = Literal["xgboost", "lightgbm", "onnx", "torch"]
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
MANIFEST = "manifest.json"
TORCH_WEIGHTS = "weights.pt"  # a net's torch state dict, loaded with weights_only
WARM_UP_BATCHES = (1, 32)


class Strict(BaseModel):
    """Unknown keys are errors: a typo in a manifest must not pass silently."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class InputContract(Strict):
    window: int = Field(WINDOW, gt=0, description="Rows (time steps) per window, T; oldest first.")
    n_features: int = Field(N_FEATURES, gt=0, description="Features per row, F.")
    features: list[str] = Field(list(FEATURES), description="Feature names in column order.")
    dtype: Literal["float32"] = Field("float32", description="Element type of the batch [B, T, F].")

    @model_validator(mode="after")
    def _names_match_count(self) -> InputContract:
        if len(self.features) != self.n_features:
            raise ValueError(f"{len(self.features)} feature names for n_features={self.n_features}")
        return self


class OutputContract(Strict):
    name: Literal["next_return"] = Field("next_return", description="close[t+1] / close[t] - 1 for a window ending at t.")
    shape: list[str] = Field(["B"], description="One value per window in the batch.")
    dtype: Literal["float32"] = Field("float32", description="Element type of the output.")
    bounds: tuple[float, float] | None = Field(
        None, description="[low, high]: a prediction outside them is no prediction (NaN), as a net that blows up on a "
        "window unlike its training data gives. Training sets the training targets' range, widened by its width on "
        "each side; null: no bounds.")

    @model_validator(mode="after")
    def _bounds_are_an_interval(self) -> OutputContract:
        if self.bounds is not None and not (math.isfinite(self.bounds[0]) and math.isfinite(self.bounds[1])
                                            and self.bounds[0] < self.bounds[1]):
            raise ValueError(f"bounds must be finite with low < high, got {list(self.bounds)}")
        return self


class Export(Strict):
    source: Literal["torch"] = Field(description="Framework the net was trained in before export.")
    source_version: str = Field(description="Version of that framework.")
    opset: int = Field(description="ONNX opset of the exported graph.")
    max_abs_diff: float = Field(description="Largest |exported - source| prediction over the holdout windows.")


class Training(Strict):
    seed: int = Field(description="Seed of this version's trainer (weights, sampling, bagging).")
    data_seed: int = Field(description="Seed of the synthetic market series (models.data.generate_market).")
    data_start: int = Field(ge=0, description="First step of the training span in the generated series.")
    data_stop: int = Field(gt=0, description="Step after the training span; the holdout starts here.")
    validation_start: int = Field(ge=0, description="Step where the early-stopping slice at the end of the span starts.")
    n_train: int = Field(gt=0, description="Windows fitted on.")
    n_validation: int = Field(gt=0, description="Windows used for early stopping.")
    iterations: int = Field(ge=0, description="Boosting rounds or epochs kept by early stopping (0: none beat zero).")
    params: dict[str, Any] = Field(description="Trainer parameters (learning rate, depth, batch size...).")
    trained_at: AwareDatetime = Field(description="When training finished.")
    durations: dict[str, float] = Field(description="Seconds per phase: fit, export, evaluate.")
    libraries: dict[str, str] = Field(description="Versions of the libraries that produced the artifacts.")


class Metrics(Strict):
    mse: float = Field(ge=0, description="Mean squared error of the predicted return.")
    mae: float = Field(ge=0, description="Mean absolute error.")
    r2: float = Field(description="1 - MSE / variance of the targets.")
    corr: float = Field(description="Pearson correlation of predictions and targets.")
    directional_accuracy: float = Field(ge=0, le=1, description="Share of windows whose return sign is predicted.")
    zero_mse: float = Field(ge=0, description="MSE of always predicting zero, the baseline to beat.")
    n: int = Field(gt=0, description="Windows evaluated.")


class Manifest(Strict):
    schema_version: Literal[1] = Field(1, description="Version of this manifest schema.")
    name: str = Field(min_length=1, description="Model (member) name, e.g. patchtst.")
    version: str = Field(min_length=1, description="Model version, e.g. v2.")
    framework: Framework = Field(description="The runtime that serves the version on CPU (models.runtimes).")
    input: InputContract = Field(default_factory=InputContract, description="What predict takes.")
    output: OutputContract = Field(default_factory=OutputContract, description="What predict returns.")
    artifacts: dict[str, Sha256] = Field(min_length=1, description="Artifact file name -> SHA-256 hex digest.")
    architecture: str | None = Field(None, description="Net class in models.nets.NETS for torch and ONNX members.")
    hparams: dict[str, Any] = Field(default_factory=dict, description="Constructor arguments of that net.")
    export: Export | None = Field(None, description="For ONNX members: where the graph came from and its parity check.")
    training: Training = Field(description="How the version was trained.")
    holdout: Metrics = Field(description="Metrics on the holdout span after the training span.")

    @model_validator(mode="after")
    def _nets_name_their_architecture(self) -> Manifest:
        # The torch runtime rebuilds the module from these; for ONNX they document the graph.
        if self.framework in ("torch", "onnx") and self.architecture is None:
            raise ValueError(f"framework {self.framework} needs an architecture")
        if self.framework == "onnx" and self.export is None:
            raise ValueError("an ONNX member records its export")
        return self


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def version_dir(root: str | Path, model: str, version: str) -> Path:
    return Path(root) / model / version


def write_version(
    root: str | Path,
    model: str,
    version: str,
    framework: Framework,
    artifacts: dict[str, Path],
    *,
    training: Training,
    holdout: Metrics,
    architecture: str | None = None,
    hparams: dict[str, Any] | None = None,
    export: Export | None = None,
    output: OutputContract | None = None,
) -> Manifest:
    """Install one version: move `artifacts` (file name -> current path) in, hash them, write the manifest.

    The old manifest goes first and the new one comes last, so until this returns the version
    is absent rather than half-written; files of a previous training not in `artifacts` are removed.
    """
    directory = version_dir(root, model, version)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MANIFEST).unlink(missing_ok=True)
    for stale in directory.iterdir():
        if stale.name in artifacts:
            continue
        if stale.is_dir():
            shutil.rmtree(stale)
        else:
            stale.unlink()
    for name, source in artifacts.items():
        if Path(source).resolve() != (directory / name).resolve():
            shutil.move(source, directory / name)
    manifest = Manifest(
        name=model, version=version, framework=framework,
        artifacts={name: sha256(directory / name) for name in artifacts},
        architecture=architecture, hparams=hparams or {}, export=export, training=training, holdout=holdout,
        output=output or OutputContract(),
    )
    _write_atomically(directory / MANIFEST, manifest.model_dump_json(indent=2) + "\n")
    return manifest


def _write_atomically(path: Path, text: str) -> None:
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(f.name, 0o644)  # NamedTemporaryFile creates 0600; replicas may run as another user
    os.replace(f.name, path)


def read_manifest(root: str | Path, model: str, version: str) -> Manifest:
    """The validated manifest of one version; ModelLoadError when it is missing or invalid."""
    path = version_dir(root, model, version) / MANIFEST
    try:
        manifest = Manifest.model_validate(json.loads(path.read_bytes()))
    except FileNotFoundError:
        raise ModelLoadError(f"{model}/{version}: no manifest at {path}") from None
    except (ValueError, ValidationError) as exc:  # JSONDecodeError is a ValueError
        raise ModelLoadError(f"{model}/{version}: invalid manifest {path}: {exc}") from None
    if (manifest.name, manifest.version) != (model, version):
        raise ModelLoadError(f"{path} describes {manifest.name}/{manifest.version}, not {model}/{version}")
    return manifest


def verify_artifacts(directory: Path, manifest: Manifest) -> None:
    """Raise ArtifactIntegrityError unless every artifact is present with the manifest's SHA-256."""
    for name, expected in manifest.artifacts.items():
        path = directory / name
        actual = sha256(path) if path.is_file() else None
        if actual != expected:
            raise ArtifactIntegrityError(path, expected, actual)


def list_versions(root: str | Path) -> dict[str, list[str]]:
    """Model name -> its versions that have a manifest, both sorted; hidden and empty directories skipped."""
    versions = {
        model.name: sorted(v.name for v in model.iterdir() if (v / MANIFEST).is_file())
        for model in sorted(Path(root).iterdir())
        if model.is_dir() and not model.name.startswith(".")
    }
    return {model: found for model, found in versions.items() if found}


def serving_framework(manifest: Manifest, device: str) -> Framework:
    """The runtime for `device`: the manifest's own, except that an ONNX net shipping its torch
    state dict runs in torch on CUDA, because the project installs the CPU onnxruntime package
    and torch is the framework whose build carries CUDA. Where torch has no CUDA (no device, or
    a CPU build of torch on a GPU machine) the net stays on ONNX Runtime, 1.3-5.6x faster than
    torch on the same CPU (BENCHMARKS.md)."""
    if device == "cuda" and manifest.framework == "onnx" and TORCH_WEIGHTS in manifest.artifacts and _torch_cuda():
        return "torch"
    return manifest.framework


def _torch_cuda() -> bool:
    import torch  # here only: an ONNX member that asks for no GPU never imports torch

    return torch.cuda.is_available()


def load_runtime(root: str | Path, model: str, version: str, num_threads: int = 1, device: str = "cpu",
                 framework: Framework | None = None) -> Runtime:
    """Read the manifest, verify the artifacts, then load and warm up the runtime.

    `framework` picks a runtime whose artifact the version ships (default: `serving_framework`).
    Raises ModelLoadError (ArtifactIntegrityError for a missing or altered artifact) with any
    framework exception as its cause.
    """
    manifest = read_manifest(root, model, version)
    directory = version_dir(root, model, version)
    verify_artifacts(directory, manifest)  # before any framework parses a byte of it
    if manifest.input.features != list(FEATURES):
        raise ModelLoadError(f"{model}/{version} expects features {manifest.input.features}, this code has {FEATURES}")
    try:
        runtime = runtime_class(framework or serving_framework(manifest, device))()
        runtime.load(directory, manifest, num_threads=num_threads, device=device)
        runtime.warm_up(WARM_UP_BATCHES)
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the framework raises is a load failure of ours
        raise ModelLoadError(f"{model}/{version}: {type(exc).__name__}: {exc}") from exc
    return runtime
