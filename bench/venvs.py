"""Virtual environments for peers whose pins conflict with the project's (BentoML), made by the harness.

`bench/.venvs/<name>` (git-ignored) gets CPU torch first (a looser pin pulls a multi-GB CUDA
build), then the peer and the very versions of the model frameworks the project's venv has, so
the peer serves the same artifacts with the same libraries. A marker file records what was
installed; a venv whose marker matches is reused.
"""
from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

VENVS = Path(__file__).resolve().parent / ".venvs"
TORCH = "torch==2.13.0"
# Framework versions pinned to the project's own (read from this interpreter's installed packages).
SAME_AS_PROJECT = ("numpy", "xgboost", "lightgbm", "onnxruntime", "onnx", "onnxmltools", "skl2onnx", "pydantic", "orjson",
                   "tqdm")
PEERS = {"bentoml": ["bentoml>=1.4,<1.5"]}


def requirements(peer: str) -> list[str]:
    """The peer's packages plus the project's framework versions, exactly."""
    return [*PEERS[peer], *(f"{name}=={metadata.version(name)}" for name in SAME_AS_PROJECT)]


def ensure(peer: str, venvs: Path = VENVS, log=print) -> Path:
    """The peer's venv under `venvs`, created or brought up to date; returns its directory."""
    venv = venvs / peer
    wanted = {"torch": TORCH, "requirements": requirements(peer)}
    marker = venv / ".bench-installed.json"
    if marker.exists() and json.loads(marker.read_text()) == wanted:
        return venv
    log(f"venv {peer}: installing {TORCH}, then {' '.join(wanted['requirements'])} (first run only)")
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, TORCH], check=True)
    subprocess.run([*pip, *wanted["requirements"]], check=True)
    marker.write_text(json.dumps(wanted))
    return venv


if __name__ == "__main__":
    print(ensure(sys.argv[1] if len(sys.argv) > 1 else "bentoml"))
