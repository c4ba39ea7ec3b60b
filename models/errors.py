"""Our own exception types: framework errors never leak past a runtime unwrapped."""


class ModelError(Exception):
    """Base of every model-side error."""


class ModelLoadError(ModelError):
    """A model version could not be loaded."""


class ArtifactIntegrityError(ModelLoadError):
    """An artifact is missing or its SHA-256 differs from the manifest's."""


class ModelPredictError(ModelError):
    """The framework failed while predicting."""


class InputShapeError(ModelPredictError):
    """The batch is not float [B, T, F] with the manifest's T and F."""
