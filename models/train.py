"""Train the demo model repository: five members at two versions each.

    python -m models.train --root model_repo [--profile demo|tiny] [--if-missing]

Data comes from the deterministic generator; the holdout is the span after training, so
the metrics in each manifest are out of time, as they would be in production.
"""
from __future__ import annotations

import argparse
import datetime
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import torch
import xgboost as xgb
from tqdm import tqdm

from models.data import generate_market, make_windows
from models.features import engineer
from models.nets import TARGET_SCALE, build_net, export_onnx
from models.repository import MANIFEST, Manifest, Metrics, version_dir, write_manifest

MEMBERS = ("xgboost", "lightgbm", "patchtst", "lstm", "nhits")
VERSIONS = ("v1", "v2")
FRAMEWORK = {"xgboost": "xgboost", "lightgbm": "lightgbm", "patchtst": "onnx", "lstm": "torch", "nhits": "onnx"}


@dataclass(frozen=True)
class Profile:
    steps: int  # length of the generated series
    holdout: int  # steps at the end kept for evaluation
    short_span: int  # v1 of each model trains on only the most recent steps
    trees: tuple[int, int]  # (v1, v2)
    epochs: tuple[int, int]
    net_stride: int  # windows for the nets are taken every n steps


PROFILES = {
    "demo": Profile(steps=24_000, holdout=4_000, short_span=10_000, trees=(120, 300), epochs=(3, 4), net_stride=2),
    "tiny": Profile(steps=2_400, holdout=500, short_span=1_200, trees=(8, 12), epochs=(1, 1), net_stride=4),
}
NET_HPARAMS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "patchtst": ({"patch": 16, "d_model": 32, "layers": 2}, {"patch": 8, "d_model": 32, "layers": 2}),
    "lstm": ({"hidden": 32, "steps": 48}, {"hidden": 48, "steps": 64}),
    "nhits": ({"pools": [8, 4, 1], "hidden": 128}, {"pools": [16, 4, 2], "hidden": 96}),
}


def metrics(predicted: np.ndarray, actual: np.ndarray) -> Metrics:
    error = predicted.astype(np.float64) - actual
    mse = float(np.mean(error**2))
    return Metrics(
        mse=mse,
        mae=float(np.mean(np.abs(error))),
        r2=1.0 - mse / float(np.var(actual)),
        directional_accuracy=float(np.mean(np.sign(predicted) == np.sign(actual))),
        n=len(actual),
    )


def _train_trees(model: str, index: int, x: np.ndarray, y: np.ndarray, out: Path, profile: Profile, seed: int) -> dict:
    features = engineer(x)
    trees = profile.trees[index]
    if model == "xgboost":
        params = {"max_depth": 4 - index, "eta": 0.05, "subsample": 0.8, "nthread": 2, "seed": seed}
        booster = xgb.train(params, xgb.DMatrix(features, label=y), num_boost_round=trees)
        booster.save_model(str(out / "model.json"))
        return {"artifacts": ["model.json"], "params": {**params, "trees": trees}}
    params = {"objective": "regression", "num_leaves": (15, 31)[index], "learning_rate": 0.05,
              "num_threads": 2, "seed": seed, "verbose": -1, "bagging_fraction": 0.8, "bagging_freq": 1}
    booster = lgb.train(params, lgb.Dataset(features, label=y), num_boost_round=trees)
    booster.save_model(str(out / "model.txt"))
    return {"artifacts": ["model.txt"], "params": {**params, "trees": trees}}


def _train_net(model: str, index: int, x: np.ndarray, y: np.ndarray, out: Path, profile: Profile, seed: int) -> dict:
    torch.manual_seed(seed)
    hparams = NET_HPARAMS[model][index]
    net = build_net(model, hparams)
    x_t, y_t = torch.from_numpy(x[:: profile.net_stride]), torch.from_numpy(y[:: profile.net_stride]) * TARGET_SCALE
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    epochs = profile.epochs[index]
    for _ in tqdm(range(epochs), desc=f"  {model}/{VERSIONS[index]} epochs", leave=False):
        for batch in torch.randperm(len(x_t), generator=generator).split(256):
            optimiser.zero_grad()
            loss = torch.nn.functional.mse_loss(net(x_t[batch]) * TARGET_SCALE, y_t[batch])
            loss.backward()
            optimiser.step()
    net.eval()
    if FRAMEWORK[model] == "torch":
        torch.save(net.state_dict(), out / "weights.pt")
        artifact = "weights.pt"
    else:
        artifact = "model.onnx"
        export_onnx(net, str(out / artifact), x_t[:2])
    return {"artifacts": [artifact], "params": {"epochs": epochs, "batch": 256, "lr": 1e-3, "stride": profile.net_stride},
            "architecture": model, "hparams": hparams}


TRAINERS: dict[str, Callable[..., dict]] = {"xgboost": _train_trees, "lightgbm": _train_trees,
                                           "patchtst": _train_net, "lstm": _train_net, "nhits": _train_net}


def train_repository(root: Path | str, profile: str = "demo", models: list[str] | None = None,
                     seed: int = 7) -> dict[tuple[str, str], Metrics]:
    """Train every (model, version) into `root`; returns the holdout metrics."""
    from models.repository import load_runtime  # after training, check what will be served

    torch.set_num_threads(2)
    spec = PROFILES[profile]
    series = generate_market(spec.steps, seed)
    split = spec.steps - spec.holdout
    holdout_x, holdout_y = make_windows(series, split - 127, spec.steps)
    results: dict[tuple[str, str], Metrics] = {}
    jobs = [(m, i) for m in (models or MEMBERS) for i in range(len(VERSIONS))]
    for model, index in tqdm(jobs, desc="training", unit="model"):
        version = VERSIONS[index]
        start = split - spec.short_span if index == 0 else 0
        x, y = make_windows(series, start, split)
        out = version_dir(root, model, version)
        out.mkdir(parents=True, exist_ok=True)
        (out / MANIFEST).unlink(missing_ok=True)  # an interrupted run leaves no stale manifest
        began = time.perf_counter()
        trained = TRAINERS[model](model, index, x, y, out, spec, seed + index)
        seconds = time.perf_counter() - began
        manifest_fields = {
            "name": model, "version": version, "framework": FRAMEWORK[model], "artifacts": trained["artifacts"],
            "architecture": trained.get("architecture"), "hparams": trained.get("hparams", {}),
            "training": {"seed": seed + index, "data_start": start, "data_stop": split, "n_train": len(y),
                         "params": trained["params"], "seconds": round(seconds, 3),
                         "trained_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")},
            "holdout": Metrics(mse=0, mae=0, r2=0, directional_accuracy=0, n=0),
        }
        write_manifest(out, manifest_fields)
        served = load_runtime(root, model, version, num_threads=2)
        manifest_fields["holdout"] = results[(model, version)] = metrics(served.predict(holdout_x), holdout_y)
        write_manifest(out, manifest_fields)
    zero = metrics(np.zeros_like(holdout_y), holdout_y)
    _print_table(results, zero)
    return results


def _print_table(results: dict[tuple[str, str], Metrics], zero: Metrics) -> None:
    print(f"\n{'model':10} {'version':7} {'mse':>11} {'mae':>9} {'r2':>7} {'dir-acc':>7}   (holdout n={zero.n})")
    for (model, version), m in results.items():
        print(f"{model:10} {version:7} {m.mse:11.4e} {m.mae:9.2e} {m.r2:7.4f} {m.directional_accuracy:7.3f}")
    print(f"{'zero':10} {'-':7} {zero.mse:11.4e} {zero.mae:9.2e} {zero.r2:7.4f} {zero.directional_accuracy:7.3f}")


def repository_complete(root: Path | str) -> bool:
    return all((version_dir(root, m, v) / MANIFEST).is_file() for m in MEMBERS for v in VERSIONS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="model_repo", help="repository root")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="demo")
    parser.add_argument("--models", nargs="+", choices=MEMBERS, help="train only these members")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--if-missing", action="store_true", help="do nothing when all ten models are present")
    args = parser.parse_args()
    if args.if_missing and repository_complete(args.root):
        print(f"model repository {args.root} is complete; not training")
        return
    train_repository(args.root, args.profile, args.models, args.seed)


if __name__ == "__main__":
    main()
