"""Members that misbehave or answer predictably on purpose, for the fault and traffic tests."""
import asyncio

import numpy as np
from ray import serve


@serve.deployment(ray_actor_options={"num_cpus": 0.05})
class FaultyMember:
    """`raise`: every call fails; `hang`: every call stalls far past any deadline."""

    def __init__(self, name: str, mode: str) -> None:
        self.name, self.mode = name, mode

    async def predict(self, windows: np.ndarray) -> np.ndarray:
        if self.mode == "raise":
            raise RuntimeError(f"{self.name} is broken")
        await asyncio.sleep(60)
        return np.zeros(len(windows), dtype=np.float32)

    def info(self) -> dict:
        return {"deployment": self.name, "device": "cpu", "manifest": {}}


@serve.deployment(ray_actor_options={"num_cpus": 0.05})
class SyntheticMember:
    """A member whose answer the tests know: `signal(window) + bias` (see `signal`)."""

    def __init__(self, name: str, bias: float) -> None:
        self.name, self.bias = name, bias

    async def predict(self, windows: np.ndarray) -> np.ndarray:
        return (signal(windows) + self.bias).astype(np.float32)

    def info(self) -> dict:
        return {"deployment": self.name, "device": "cpu", "manifest": {}}


def signal(windows: np.ndarray) -> np.ndarray:
    """The synthetic members' shared prediction: a scaled last close."""
    return np.asarray(windows, dtype=np.float64)[:, -1, 0] * 1e-3
