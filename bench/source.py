"""What is measured: the committed code of a git ref, exported apart from the working tree.

`--source HEAD` (the default) exports the ref with `git archive` to a cache directory and lays
the working tree's bench/ over it, so edits in progress in the working tree never mix into a
run. The demo models there are the working tree's model_repo/ when models/ is unchanged since
the ref (training is seeded, so they are what the ref would train), else trained with the ref's
code (`models.train --if-missing`). `--source worktree` measures the tree as it is.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CACHE = Path("/tmp/ensemble-bench-src")
SKIP = shutil.ignore_patterns(".venvs", "results", "plots", "__pycache__", "*.pyc")


def resolve(ref: str, repo: Path = REPO) -> str:
    return subprocess.run(["git", "rev-parse", "--verify", f"{ref}^{{commit}}"], cwd=repo, check=True,
                          capture_output=True, text=True).stdout.strip()


def dirty_paths(repo: Path = REPO) -> list[str]:
    out = subprocess.run(["git", "status", "--porcelain"], cwd=repo, check=True, capture_output=True, text=True).stdout
    return [line[3:] for line in out.splitlines() if line[3:] and not line[3:].startswith("bench")]


def prepare(ref: str, repo: Path = REPO, python: str = sys.executable, log=print) -> tuple[Path, str]:
    """Export `ref` (cached by commit), overlay bench/, train the models if missing; returns (root, sha)."""
    sha = resolve(ref, repo)
    dest = CACHE / sha[:12]
    if not (dest / ".exported").exists():
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        archive = subprocess.run(["git", "archive", "--format=tar", sha], cwd=repo, check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
        (dest / ".exported").write_text(sha)
    shutil.rmtree(dest / "bench", ignore_errors=True)
    shutil.copytree(repo / "bench", dest / "bench", ignore=SKIP)
    models_unchanged = subprocess.run(["git", "diff", "--quiet", sha, "--", "models"], cwd=repo).returncode == 0
    if models_unchanged and (repo / "model_repo").is_dir() and not (dest / "model_repo").exists():
        shutil.copytree(repo / "model_repo", dest / "model_repo")
    log(f"source: {sha[:12]} exported to {dest}; training the demo models there if missing")
    subprocess.run([python, "-m", "models.train", "--root", "model_repo", "--if-missing"], cwd=dest, check=True,
                   env={**os.environ, "PYTHONPATH": str(dest)}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return dest, sha
