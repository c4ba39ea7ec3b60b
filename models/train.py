"""Train the model repository: five members at two versions each.

    python -m models.train --root model_repo [--profile demo|tiny] [--models xgboost lstm ...]
                           [--seed 7] [--if-missing]

One synthetic series is cut chronologically: the training span, whose last part is kept for
early stopping, then the holdout, which no model ever sees while training. v1 of every
member trains on the most recent part of the span only, v2 on all of it with other
hyperparameters. Each manifest carries the holdout metrics of exactly what is served on CPU:
the trees' own predictions, the nets' ONNX Runtime outputs. A net also ships its torch state
dict, which serves it on CUDA (`models.repository.load_runtime`); the two agree within
`PARITY_RTOL` on the holdout or the version is not installed.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property, partial
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import lightgbm as lgb
import numpy as np
import onnxruntime as ort
import torch
import xgboost as xgb
from tqdm import tqdm

from models.data import WINDOW, generate_market, make_windows
from models.errors import ModelLoadError
from models.features import FEATURE_NAMES, engineer
from models.nets import ONNX_INPUT, ONNX_OPSET, build_net, export_onnx, normalise
from models.repository import (MANIFEST, TORCH_WEIGHTS, Export, Framework, Metrics, OutputContract, Training,
                               load_runtime, read_manifest, version_dir, write_version)

MEMBERS = ("xgboost", "lightgbm", "patchtst", "lstm", "nhits")
VERSIONS = ("v1", "v2")
# ONNX Runtime serves every net on CPU: 1.3-5.6x the rows/s of torch eager at 1-256 rows
# (`python -m bench.net_runtimes`, BENCHMARKS.md).
FRAMEWORK: dict[str, Framework] = {
    "xgboost": "xgboost", "lightgbm": "lightgbm", "patchtst": "onnx", "lstm": "onnx", "nhits": "onnx",
}
TRAIN_THREADS = 2
PARITY_RTOL = 1e-4  # exported vs torch, relative to the largest prediction


@dataclass(frozen=True)
class Profile:
    steps: int  # length of the generated series
    holdout: int  # steps at its end that no model trains on
    validation: int  # steps at the end of the training span, for early stopping
    recent: int  # the v1 versions train on only this many most recent steps of the span
    max_rounds: int  # boosting rounds, before early stopping
    max_epochs: int  # epochs, before early stopping
    patience: int  # epochs without a better validation MSE before stopping (rounds: x10)


PROFILES = {
    "demo": Profile(steps=30_000, holdout=6_000, validation=3_000, recent=12_000, max_rounds=400, max_epochs=6,
                    patience=2),
    "tiny": Profile(steps=1_800, holdout=300, validation=300, recent=900, max_rounds=8, max_epochs=1, patience=1),
}

# Trainer parameters per (member, version). Nets: "hparams" build the module, the rest drive training.
PARAMS: dict[tuple[str, str], dict[str, Any]] = {
    ("xgboost", "v1"): {"max_depth": 3, "eta": 0.05, "subsample": 0.8, "colsample_bytree": 0.8,
                        "min_child_weight": 20},
    ("xgboost", "v2"): {"max_depth": 5, "eta": 0.03, "subsample": 0.7, "colsample_bytree": 0.7,
                        "min_child_weight": 50, "lambda": 5.0},
    ("lightgbm", "v1"): {"num_leaves": 15, "learning_rate": 0.05, "min_data_in_leaf": 100,
                         "feature_fraction": 0.8, "bagging_fraction": 0.8, "bagging_freq": 1},
    ("lightgbm", "v2"): {"num_leaves": 31, "learning_rate": 0.03, "min_data_in_leaf": 200,
                         "feature_fraction": 0.7, "bagging_fraction": 0.7, "bagging_freq": 1, "lambda_l2": 5.0},
    ("patchtst", "v1"): {"hparams": {"patch": 16, "d_model": 32, "heads": 4, "layers": 2, "dropout": 0.1},
                         "lr": 2e-3, "weight_decay": 1e-4, "batch_size": 256},
    ("patchtst", "v2"): {"hparams": {"patch": 8, "d_model": 32, "heads": 4, "layers": 2, "dropout": 0.1},
                         "lr": 1e-3, "weight_decay": 1e-4, "batch_size": 256},
    ("lstm", "v1"): {"hparams": {"hidden": 32, "layers": 1, "steps": 32},
                     "lr": 3e-3, "weight_decay": 0.0, "batch_size": 256},
    ("lstm", "v2"): {"hparams": {"hidden": 48, "layers": 1, "steps": 64},
                     "lr": 2e-3, "weight_decay": 0.0, "batch_size": 256},
    ("nhits", "v1"): {"hparams": {"pools": [16, 4, 1], "hidden": 128, "lookback": 128, "dropout": 0.1},
                      "lr": 1e-3, "weight_decay": 1e-3, "batch_size": 256},
    ("nhits", "v2"): {"hparams": {"pools": [8, 2], "hidden": 64, "lookback": 64, "dropout": 0.2},
                      "lr": 1e-3, "weight_decay": 1e-3, "batch_size": 256},
}


@dataclass
class Dataset:
    """The windows of one run, cut chronologically.

    Window i holds rows i .. i+WINDOW-1 and its target is the return into row i+WINDOW, so
    training windows (targets before `validation_start`) never overlap validation targets,
    and the holdout starts after the span.
    """

    seed: int
    profile: Profile
    series: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.series = generate_market(self.profile.steps, self.seed)
        self.split = self.profile.steps - self.profile.holdout  # first step of the holdout
        self.validation_start = self.split - self.profile.validation
        self.x, self.y = make_windows(self.series, 0, self.split)
        self.holdout_x, self.holdout_y = make_windows(self.series, self.split - WINDOW + 1, self.profile.steps)

    def train_rows(self, start: int) -> slice:
        return slice(start, self.validation_start - WINDOW)

    @property
    def validation_rows(self) -> slice:
        return slice(self.validation_start - WINDOW, len(self.x))

    @cached_property
    def features(self) -> np.ndarray:
        """Engineered features of every window, in chunks to bound the float64 temporaries."""
        return np.concatenate([engineer(self.x[i : i + 4096]) for i in range(0, len(self.x), 4096)])

    @cached_property
    def holdout_features(self) -> np.ndarray:
        return engineer(self.holdout_x)


@dataclass
class Fitted:
    """What a trainer hands back: artifacts written to a staging directory and their holdout predictions."""

    artifacts: dict[str, Path]
    holdout_pred: np.ndarray
    iterations: int
    params: dict[str, Any]
    durations: dict[str, float]
    architecture: str | None = None
    hparams: dict[str, Any] | None = None
    export: Export | None = None


@contextmanager
def _timed(durations: dict[str, float], phase: str) -> Iterator[None]:
    began = time.perf_counter()
    yield
    durations[phase] = round(durations.get(phase, 0.0) + time.perf_counter() - began, 3)


def _fit_xgboost(data: Dataset, rows: slice, params: dict[str, Any], seed: int, out: Path) -> Fitted:
    params = {**params, "objective": "reg:squarederror", "tree_method": "hist", "nthread": TRAIN_THREADS, "seed": seed}
    durations: dict[str, float] = {}
    names = list(FEATURE_NAMES)
    with _timed(durations, "fit"):
        train = xgb.DMatrix(data.features[rows], label=data.y[rows], feature_names=names)
        validation = xgb.DMatrix(data.features[data.validation_rows], label=data.y[data.validation_rows],
                                 feature_names=names)
        booster = xgb.train(params, train, data.profile.max_rounds, evals=[(validation, "validation")],
                            early_stopping_rounds=10 * data.profile.patience, verbose_eval=False)
        booster = booster[: booster.best_iteration + 1]  # keep only the trees early stopping chose
        booster.save_model(out / "model.json")
    with _timed(durations, "evaluate"):
        holdout_pred = booster.inplace_predict(data.holdout_features)
    return Fitted({"model.json": out / "model.json"}, holdout_pred, booster.num_boosted_rounds(), params, durations)


def _fit_lightgbm(data: Dataset, rows: slice, params: dict[str, Any], seed: int, out: Path) -> Fitted:
    params = {**params, "objective": "regression", "num_threads": TRAIN_THREADS, "seed": seed,
              "deterministic": True, "force_col_wise": True, "verbose": -1}
    durations: dict[str, float] = {}
    names = list(FEATURE_NAMES)
    with _timed(durations, "fit"):
        train = lgb.Dataset(data.features[rows], data.y[rows], feature_name=names)
        validation = train.create_valid(data.features[data.validation_rows], data.y[data.validation_rows])
        booster = lgb.train(params, train, data.profile.max_rounds, valid_sets=[validation],
                            callbacks=[lgb.early_stopping(10 * data.profile.patience, verbose=False)])
        booster.save_model(out / "model.txt", num_iteration=booster.best_iteration)
    with _timed(durations, "evaluate"):
        holdout_pred = booster.predict(data.holdout_features, num_iteration=booster.best_iteration)
    return Fitted({"model.txt": out / "model.txt"}, holdout_pred, booster.best_iteration, params, durations)


def _fit_net(model: str, data: Dataset, rows: slice, params: dict[str, Any], seed: int, out: Path) -> Fitted:
    """Adam on the normalised inputs, MSE in units of each window's volatility, early stopping."""
    torch.manual_seed(seed)
    profile, hparams = data.profile, params["hparams"]
    net = build_net(model, hparams)
    durations: dict[str, float] = {}
    with _timed(durations, "fit"), torch.no_grad():
        # Normalising once up front is the same arithmetic forward does on every call.
        inputs, scale = normalise(torch.from_numpy(data.x[rows]))
        targets = torch.from_numpy(data.y[rows]) / scale
        val_inputs, val_scale = normalise(torch.from_numpy(data.x[data.validation_rows]))
        val_y = torch.from_numpy(data.y[data.validation_rows])

    def validation_mse() -> float:
        net.eval()
        with torch.inference_mode():
            return float(torch.mean((net.forecast(val_inputs) * val_scale - val_y) ** 2))

    optimiser = torch.optim.AdamW(net.parameters(), lr=params["lr"], weight_decay=params["weight_decay"])
    batches = math.ceil(len(targets) / params["batch_size"])
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, params["lr"], total_steps=profile.max_epochs * batches)
    generator = torch.Generator().manual_seed(seed)
    # Epoch 0 is the untrained net, which predicts zero: a version never ends up worse than that.
    best_mse, best_epoch, best_state = validation_mse(), 0, copy.deepcopy(net.state_dict())
    with _timed(durations, "fit"):
        epochs = tqdm(range(1, profile.max_epochs + 1), desc=f"  {model} epochs", leave=False, position=1)
        for epoch in epochs:
            net.train()
            for batch in torch.randperm(len(targets), generator=generator).split(params["batch_size"]):
                optimiser.zero_grad(set_to_none=True)
                loss = torch.nn.functional.mse_loss(net.forecast(inputs[batch]), targets[batch])
                loss.backward()
                optimiser.step()
                schedule.step()
            mse = validation_mse()
            epochs.set_postfix(val_mse=f"{mse:.3e}", best=f"{best_mse:.3e}")
            if mse < best_mse:
                best_mse, best_epoch, best_state = mse, epoch, copy.deepcopy(net.state_dict())
            elif epoch - best_epoch >= profile.patience:
                break
    net.load_state_dict(best_state)
    net.eval()
    with _timed(durations, "evaluate"), torch.inference_mode():
        torch_pred = net(torch.from_numpy(data.holdout_x)).numpy()
    train_params = {k: v for k, v in params.items() if k != "hparams"} | {"max_epochs": profile.max_epochs,
                                                                          "patience": profile.patience}
    fitted = Fitted({}, torch_pred, best_epoch, train_params, durations, model, hparams)
    torch.save(net.state_dict(), out / TORCH_WEIGHTS)
    with _timed(durations, "export"):
        export_onnx(net, out / "model.onnx")
        session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
        fitted.holdout_pred = session.run(None, {ONNX_INPUT: data.holdout_x})[0]
    diff = float(np.max(np.abs(fitted.holdout_pred - torch_pred)))
    if diff > PARITY_RTOL * float(np.max(np.abs(torch_pred))) + 1e-9:
        raise RuntimeError(f"{model}: ONNX and torch disagree by up to {diff:.3g} on the holdout")
    fitted.artifacts = {"model.onnx": out / "model.onnx", TORCH_WEIGHTS: out / TORCH_WEIGHTS}
    fitted.export = Export(source="torch", source_version=torch.__version__, opset=ONNX_OPSET, max_abs_diff=diff)
    return fitted


FITTERS: dict[str, Callable[[Dataset, slice, dict[str, Any], int, Path], Fitted]] = {
    "xgboost": _fit_xgboost, "lightgbm": _fit_lightgbm, **{m: partial(_fit_net, m) for m in ("patchtst", "lstm", "nhits")},
}


def output_bounds(targets: np.ndarray) -> tuple[float, float]:
    """The targets' range widened by its width on each side: a forecast shrinks toward the mean, so
    only a model that blew up (a net on a window unlike any it trained on) leaves it."""
    low, high = float(targets.min()), float(targets.max())
    return low - (high - low), high + (high - low)


def metrics(predicted: np.ndarray, actual: np.ndarray) -> Metrics:
    """Holdout metrics of `predicted` next returns against the `actual` ones."""
    predicted, actual = predicted.astype(np.float64), actual.astype(np.float64)
    error = predicted - actual
    mse = float(np.mean(error**2))
    spread = float(np.std(predicted) * np.std(actual))
    return Metrics(
        mse=mse,
        mae=float(np.mean(np.abs(error))),
        r2=1.0 - mse / float(np.var(actual)),
        corr=float(np.mean((predicted - predicted.mean()) * (actual - actual.mean())) / spread) if spread else 0.0,
        directional_accuracy=float(np.mean(np.sign(predicted) == np.sign(actual))),
        zero_mse=float(np.mean(actual**2)),
        n=len(actual),
    )


def _libraries(framework: Framework) -> dict[str, str]:
    versions = {"numpy": np.__version__}
    match framework:
        case "xgboost":
            versions["xgboost"] = xgb.__version__
        case "lightgbm":
            versions["lightgbm"] = lgb.__version__
        case "onnx":
            versions |= {"torch": torch.__version__, "onnxruntime": ort.__version__}
    return versions


def version_seed(model: str, version: str, run_seed: int) -> int:
    """The seed of one (model, version)'s trainer in a run: training a subset gives the same artifacts."""
    return run_seed + 101 * (MEMBERS.index(model) * len(VERSIONS) + VERSIONS.index(version))


def _train_one(root: Path, data: Dataset, model: str, version: str, run_seed: int) -> Metrics:
    """Fit, evaluate and install one version, then check that what is served predicts the same."""
    profile = data.profile
    seed = version_seed(model, version, run_seed)
    start = data.split - profile.recent if version == "v1" else 0
    rows = data.train_rows(start)
    root.mkdir(parents=True, exist_ok=True)
    # Staged under the root so installing the artifacts is a rename on the same filesystem.
    with TemporaryDirectory(dir=root, prefix=".staging-") as staging:
        fitted = FITTERS[model](data, rows, PARAMS[(model, version)], seed, Path(staging))
        holdout = metrics(fitted.holdout_pred, data.holdout_y)
        training = Training(
            seed=seed, data_seed=data.seed, data_start=start, data_stop=data.split,
            validation_start=data.validation_start, n_train=len(data.y[rows]),
            n_validation=len(data.y[data.validation_rows]), iterations=fitted.iterations,
            params=fitted.params, trained_at=datetime.now().astimezone(), durations=fitted.durations,
            libraries=_libraries(FRAMEWORK[model]),
        )
        write_version(root, model, version, FRAMEWORK[model], fitted.artifacts, training=training, holdout=holdout,
                      architecture=fitted.architecture, hparams=fitted.hparams, export=fitted.export,
                      output=OutputContract(bounds=output_bounds(data.y[rows])))
    served = load_runtime(root, model, version, num_threads=TRAIN_THREADS).predict(data.holdout_x[:256])
    expected = fitted.holdout_pred[:256]
    if not np.allclose(served, expected, rtol=PARITY_RTOL, atol=PARITY_RTOL * float(np.max(np.abs(expected)))):
        raise RuntimeError(f"{model}/{version}: the served runtime does not reproduce the evaluated predictions")
    return holdout


def _train_pairs(root: Path, profile: str, pairs: list[tuple[str, str]], seed: int) -> dict[tuple[str, str], Metrics]:
    data = Dataset(seed, PROFILES[profile])
    threads = torch.get_num_threads()
    torch.set_num_threads(TRAIN_THREADS)
    results: dict[tuple[str, str], Metrics] = {}
    seconds: dict[tuple[str, str], float] = {}
    try:
        progress = tqdm(pairs, desc="training", unit="model", position=0)
        for model, version in progress:
            progress.set_postfix_str(f"{model}/{version}")
            began = time.perf_counter()
            results[(model, version)] = _train_one(root, data, model, version, seed)
            seconds[(model, version)] = time.perf_counter() - began
    finally:
        torch.set_num_threads(threads)
    print_table(results, seconds, metrics(np.zeros_like(data.holdout_y), data.holdout_y))
    return results


def _pairs(models: Iterable[str] | None) -> list[tuple[str, str]]:
    chosen = list(models or MEMBERS)
    unknown = sorted(set(chosen) - set(MEMBERS))
    if unknown:
        raise ValueError(f"unknown members {unknown}; known: {MEMBERS}")
    return [(m, v) for m in MEMBERS if m in chosen for v in VERSIONS]


def train_repository(root: Path | str, profile: str = "demo", models: list[str] | None = None,
                     seed: int = 7) -> dict[tuple[str, str], Metrics]:
    """Train both versions of `models` (default: all five members) into `root`; returns holdout metrics.

    Deterministic given `seed`: each (model, version) derives its own seed from it, so training
    a subset gives the same artifacts as training everything.
    """
    return _train_pairs(Path(root), profile, _pairs(models), seed)


def ensure_repository(root: Path | str, profile: str = "demo", models: list[str] | None = None,
                      seed: int = 7) -> bool:
    """Train only the (model, version)s whose manifest is missing, or stale or invalid where this
    run's seeds wrote it (an older training: another framework than this code serves them with,
    no output bounds, older rules); returns whether it trained. A version trained by anything
    else is never replaced: where its manifest is invalid, ModelLoadError says so, and its files
    stay as they are (training a version removes the files it does not write)."""
    missing = []
    for model, version in _pairs(models):
        seeds = (version_seed(model, version, seed), seed)
        try:
            manifest = read_manifest(root, model, version)
            ours = (manifest.training.seed, manifest.training.data_seed) == seeds
            stale = ours and (manifest.framework != FRAMEWORK[model] or manifest.output.bounds is None)
        except ModelLoadError as exc:
            stale = _written_with(root, model, version) in (None, seeds)
            if not stale:
                raise ModelLoadError(f"{exc}; this training did not write it, so it is left as it is: "
                                     "mend or remove it") from None
        if stale:
            missing.append((model, version))
    if missing:
        _train_pairs(Path(root), profile, missing, seed)
    return bool(missing)


def _written_with(root: Path | str, model: str, version: str) -> tuple[Any, ...] | None:
    """The training seeds a version's manifest names, read leniently (it may not validate; () where
    they cannot be read), or None where it has no manifest: never trained, or a training cut
    short (the manifest comes last)."""
    path = version_dir(root, model, version) / MANIFEST
    if not path.exists():
        return None
    try:
        training = json.loads(path.read_bytes())["training"]
        return training["seed"], training["data_seed"]
    except (ValueError, TypeError, KeyError):
        return ()


def print_table(results: dict[tuple[str, str], Metrics], seconds: dict[tuple[str, str], float],
                zero: Metrics) -> None:
    """The holdout table: one row per version, then the zero predictor every version must beat."""
    header = f"{'model':9} {'version':7} {'framework':9} {'mse':>10} {'mae':>9} {'r2':>7} {'corr':>6} {'dir-acc':>7} {'train s':>7}"
    print(f"\nholdout: {zero.n} windows after the training span\n{header}")
    for (model, version), m in results.items():
        print(f"{model:9} {version:7} {FRAMEWORK[model]:9} {m.mse:10.4e} {m.mae:9.3e} {m.r2:7.4f} {m.corr:6.3f} "
              f"{m.directional_accuracy:7.3f} {seconds[(model, version)]:7.1f}")
    print(f"{'zero':9} {'-':7} {'-':9} {zero.mse:10.4e} {zero.mae:9.3e} {zero.r2:7.4f} {'-':>6} {'-':>7} {'-':>7}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("model_repo"), help="repository root (default: model_repo)")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="demo", help="data and training budget")
    parser.add_argument("--models", nargs="+", choices=MEMBERS, help="train only these members (both versions)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the data and of every trainer")
    parser.add_argument("--if-missing", action="store_true", help="train only versions whose manifest is missing or stale")
    args = parser.parse_args(argv)
    if args.if_missing:
        if not ensure_repository(args.root, args.profile, args.models, args.seed):
            print(f"{args.root}: every model version is present; nothing to train")
        return
    train_repository(args.root, args.profile, args.models, args.seed)


if __name__ == "__main__":
    main()
