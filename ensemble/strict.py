"""Base of every schema: unknown keys are errors, never silently dropped; numbers are finite."""
from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    # Infinity and NaN are no setting's value: a prior of .inf made every trust weight NaN.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
