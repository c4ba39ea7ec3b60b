"""The model repository: `<root>/<model>/<version>/` holding artifacts and a manifest.json.

Every artifact's SHA-256 is checked against the manifest before anything is loaded, and
nothing is unpickled: trees are JSON/text, nets are ONNX or a weights-only state dict.
"""
from __future__ import annotations

import hashlib
import importlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from models.data import FEATURES, N_FEATURES, WINDOW
from models.errors import ArtifactIntegrityError, ModelError, ModelLoadError
from models.runtimes.base import Runtime

Framework = Literal["xgboost", "lightgbm", "onnx", "torch"]
MANIFEST = "manifest.json"
# Imported on demand, so a replica loads only its own framework.
RUNTIMES: dict[str, str] = {
    "xgboost": "models.runtimes.xgboost_runtime:XGBoostRuntime",
    "lightgbm": "models.runtimes.lightgbm_runtime:LightGBMRuntime",
    "onnx": "models.runtimes.onnx_runtime:ONNXRuntime",
    "torch": "models.runtimes.torch_runtime:TorchRuntime",
}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class InputContract(Strict):
    window: int = Field(WINDOW, description="Rows (time steps) per window, T.")
    n_features: int = Field(N_FEATURES, description="Features per row, F.")
    features: list[str] = Field(list(FEATURES), description="Feature names in column order.")


class OutputContract(Strict):
    name: str = Field("next_return", description="What the model predicts: close[t+1]/close[t] - 1.")
    shape: list[str] = Field(["B"], description="One float per window.")


class Training(Strict):
    seed: int = Field(description="Seed of the data generator and the trainer.")
    data_start: int = Field(description="First step of the training span in the generated series.")
    data_stop: int = Field(description="Step after the last of the training span.")
    n_train: int = Field(description="Training windows.")
    params: dict[str, Any] = Field(description="Hyperparameters the model was trained with.")
    seconds: float = Field(description="Wall-clock training time.")
    trained_at: str = Field(description="UTC time of training, ISO 8601.")


class Metrics(Strict):
    mse: float = Field(description="Mean squared error on the holdout.")
    mae: float = Field(description="Mean absolute error on the holdout.")
    r2: float = Field(description="1 - MSE / variance of the holdout targets.")
    directional_accuracy: float = Field(description="Share of holdout windows whose return sign is predicted.")
    n: int = Field(description="Holdout windows.")


class Manifest(Strict):
    name: str = Field(description="Model name, e.g. patchtst.")
    version: str = Field(description="Version, e.g. v2.")
    framework: Framework = Field(description="Runtime that serves it.")
    input: InputContract = Field(default_factory=InputContract, description="Input contract.")
    output: OutputContract = Field(default_factory=OutputContract, description="Output contract.")
    artifacts: dict[str, str] = Field(description="Artifact file name -> SHA-256 hex digest.")
    architecture: str | None = Field(None, description="Net class for torch/onnx members (see models.nets).")
    hparams: dict[str, Any] = Field(default_factory=dict, description="Constructor arguments of the net.")
    training: Training = Field(description="How it was trained.")
    holdout: Metrics = Field(description="Holdout metrics.")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def version_dir(root: str | Path, model: str, version: str) -> Path:
    return Path(root) / model / version


def write_manifest(directory: Path, fields: dict[str, Any]) -> Manifest:
    """Hash the artifacts named in `fields['artifacts']` and write the manifest last."""
    fields = {**fields, "artifacts": {name: sha256(directory / name) for name in fields["artifacts"]}}
    manifest = Manifest.model_validate(fields)
    (directory / MANIFEST).write_text(manifest.model_dump_json(indent=2))
    return manifest


def read_manifest(root: str | Path, model: str, version: str) -> Manifest:
    path = version_dir(root, model, version) / MANIFEST
    try:
        return Manifest.model_validate(json.loads(path.read_text()))
    except FileNotFoundError:
        raise ModelLoadError(f"{model}/{version}: no manifest at {path}") from None
    except (ValueError, ValidationError) as exc:
        raise ModelLoadError(f"{model}/{version}: invalid manifest: {exc}") from None


def verify_artifacts(directory: Path, manifest: Manifest) -> None:
    for name, expected in manifest.artifacts.items():
        path = directory / name
        if not path.is_file():
            raise ArtifactIntegrityError(f"{manifest.name}/{manifest.version}: artifact {name} is missing")
        actual = sha256(path)
        if actual != expected:
            raise ArtifactIntegrityError(
                f"{manifest.name}/{manifest.version}: artifact {name} has SHA-256 {actual}, manifest says {expected}"
            )


def list_versions(root: str | Path) -> dict[str, list[str]]:
    return {
        model.name: sorted(v.name for v in model.iterdir() if (v / MANIFEST).is_file())
        for model in sorted(Path(root).iterdir())
        if model.is_dir()
    }


def load_runtime(root: str | Path, model: str, version: str, num_threads: int = 1, device: str = "cpu") -> Runtime:
    """Verify, load and warm up one version."""
    manifest = read_manifest(root, model, version)
    directory = version_dir(root, model, version)
    verify_artifacts(directory, manifest)
    module_name, class_name = RUNTIMES[manifest.framework].split(":")
    runtime_class = getattr(importlib.import_module(module_name), class_name)
    try:
        runtime = runtime_class(directory, manifest, num_threads, device)
        runtime.warm_up()
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - any framework failure is a load error of ours
        raise ModelLoadError(f"{model}/{version}: {type(exc).__name__}: {exc}") from exc
    return runtime
