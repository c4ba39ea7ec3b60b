"""Members that misbehave or answer predictably on purpose, for the fault and traffic tests."""
import asyncio
import time
from typing import Any

import numpy as np
from ray import serve

from deployments.control import ControlPlane


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


@serve.deployment(num_replicas=1, max_ongoing_requests=1000, ray_actor_options={"num_cpus": 0.05})
class LateControlPlane(ControlPlane.func_or_class):
    """The control plane, `delay_s` slow to start, as one opening a large or a remote state store."""

    def __init__(self, args: dict[str, Any], delay_s: float) -> None:
        time.sleep(delay_s)
        super().__init__(args)


def signal(windows: np.ndarray) -> np.ndarray:
    """The synthetic members' shared prediction: a scaled last close."""
    return np.asarray(windows, dtype=np.float64)[:, -1, 0] * 1e-3
