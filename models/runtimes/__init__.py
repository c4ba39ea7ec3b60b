"""One runtime per framework; `runtime_class(framework)` imports only the one asked for."""
from models.runtimes.base import RUNTIMES, Runtime, runtime_class

__all__ = ["RUNTIMES", "Runtime", "runtime_class"]
