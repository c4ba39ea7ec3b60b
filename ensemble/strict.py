"""Base of every schema: unknown keys are errors, never silently dropped."""
from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
