"""Our own exception types: framework errors never leave a runtime unwrapped."""
from __future__ import annotations

from pathlib import Path


class ModelError(Exception):
    """Base of every model-side error."""


class ModelLoadError(ModelError):
    """A model version could not be loaded: no or invalid manifest, bad artifact, framework failure."""


class ArtifactIntegrityError(ModelLoadError):
    """An artifact is missing or its SHA-256 differs from the one in the manifest."""

    def __init__(self, path: Path, expected: str, actual: str | None) -> None:
        self.path, self.expected, self.actual = path, expected, actual
        found = "the file is missing" if actual is None else f"found SHA-256 {actual}"
        super().__init__(f"artifact {path}: manifest expects SHA-256 {expected}, {found}")


class ModelPredictError(ModelError):
    """The framework failed while predicting."""


class InputShapeError(ModelPredictError):
    """The batch is not numeric [B, T, F] with the manifest's T and F."""
