"""The tree members' prediction per call: the framework's own predictor against ONNX Runtime.

`python -m bench.tree_engines [--repo model_repo] [--rounds 5]`: for each tree version, the
microseconds per call of the booster's own prediction and of the converted trees in ONNX
Runtime (`models.runtimes.trees`), on 1 and 64 engineered rows, with one framework thread,
alternating the two in every round; then `engineer` alone and the whole `runtime.predict`.
Prints the median of the rounds as JSON.
"""
from __future__ import annotations

import argparse
import json
import statistics
import timeit
from collections.abc import Callable
from functools import partial

from models.data import sample_windows
from models.features import engineer
from models.repository import load_runtime
from models.train import FRAMEWORK, VERSIONS

ROWS = (1, 64)


def per_call_us(call: Callable[[], object], number: int) -> float:
    return min(timeit.repeat(call, number=number, repeat=3)) / number * 1e6


def measure(repo: str, rounds: int, number: int = 200) -> dict[str, dict[str, float]]:
    """Version -> "<what> <rows> rows" -> median µs per call; `number` calls per timing at 64
    rows, ten times as many at one."""
    windows = sample_windows(max(ROWS), seed=9)
    results: dict[str, dict[str, float]] = {}
    for model in (m for m, framework in FRAMEWORK.items() if framework in ("xgboost", "lightgbm")):
        for version in VERSIONS:
            runtime = load_runtime(repo, model, version)
            if runtime.engine != "onnxruntime":
                raise SystemExit(f"{model}/{version}: its trees did not convert, the framework serves it")
            samples: dict[str, list[float]] = {}
            for _ in range(rounds):
                for rows in ROWS:
                    features, batch = engineer(windows[:rows]), windows[:rows]
                    for name, call in ((f"{model} {rows} rows", partial(runtime.framework_predict, features)),
                                       (f"onnxruntime {rows} rows", partial(runtime.features_predict, features)),
                                       (f"engineer {rows} rows", partial(engineer, batch)),
                                       (f"runtime.predict {rows} rows", partial(runtime.predict, batch))):
                        samples.setdefault(name, []).append(per_call_us(call, number * (10 if rows == 1 else 1)))
            results[f"{model}-{version}"] = {name: round(statistics.median(v), 1) for name, v in samples.items()}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", default="model_repo")
    parser.add_argument("--rounds", type=int, default=5)
    opts = parser.parse_args()
    print(json.dumps(measure(opts.repo, opts.rounds), indent=1))


if __name__ == "__main__":
    main()
