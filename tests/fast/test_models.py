"""Each runtime on tiny models trained into a temp dir; integrity checks; the data generator."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from models.data import CLOSE, FEATURES, HIGH, LOW, MACD, WINDOW, generate_market, make_windows, sample_windows
from models.errors import ArtifactIntegrityError, InputShapeError, ModelLoadError
from models.features import FEATURE_NAMES, engineer
from models.nets import NETS, build_net, export_onnx
from models.repository import MANIFEST, Manifest, list_versions, load_runtime, read_manifest, version_dir, write_version
from models.runtimes.base import non_finite_windows
from models.runtimes.trees import TreeRuntime
from models.train import FRAMEWORK, MEMBERS, VERSIONS, ensure_repository

PAIRS = [(m, v) for m in MEMBERS for v in VERSIONS]


@pytest.fixture
def repo(tiny_repo: Path) -> Path:
    return tiny_repo


@pytest.mark.parametrize("model, version", PAIRS)
def test_every_version_loads_and_predicts(repo: Path, model: str, version: str):
    runtime = load_runtime(repo, model, version)
    windows = sample_windows(7, seed=3)
    out = runtime.predict(windows)
    assert out.shape == (7,) and out.dtype == np.float32 and np.isfinite(out).all()
    np.testing.assert_allclose(runtime.predict(windows[:1]), out[:1], rtol=1e-4, atol=1e-7)
    np.testing.assert_array_equal(runtime.predict(windows), out)
    manifest = read_manifest(repo, model, version)
    assert manifest.framework == FRAMEWORK[model] and manifest.holdout.n > 0
    assert all(len(digest) == 64 for digest in manifest.artifacts.values())
    assert (runtime.framework, runtime.device) == (manifest.framework, "cpu")


@pytest.mark.parametrize("model, version", PAIRS)
def test_a_window_without_a_finite_prediction_is_nan_alone(repo: Path, model: str, version: str):
    runtime = load_runtime(repo, model, version)
    windows = sample_windows(3, seed=3)
    windows[1] = 3e38  # finite float32, which overflows a net
    out = runtime.predict(windows)
    assert np.isfinite(out[[0, 2]]).all() and (np.isfinite(out[1]) or np.isnan(out[1]))


@pytest.mark.parametrize("model, version", PAIRS)
def test_predictions_do_not_depend_on_the_prices_scale(repo: Path, model: str, version: str):
    """Returns are scale-free: tokens priced at 1e-9 get what the same market at 100 gets."""
    runtime = load_runtime(repo, model, version)
    windows = sample_windows(4, seed=5).astype(np.float64)
    base = runtime.predict(windows.astype(np.float32))
    for scale in (1e-12, 1e-20, 1e6):
        scaled = windows.copy()
        scaled[:, :, [CLOSE, HIGH, LOW, MACD]] *= scale  # MACD is in price units
        np.testing.assert_allclose(runtime.predict(scaled.astype(np.float32)), base, rtol=2e-3, atol=1e-6)


def test_windows_with_nan_or_inf_in_them_are_found_row_by_row():
    """Such windows get no prediction where a caller did not validate them (deployments.model)."""
    windows = sample_windows(4, seed=3)
    assert non_finite_windows(windows) is None
    windows[1, 5, 2], windows[2] = np.nan, -np.inf
    assert non_finite_windows(windows).tolist() == [False, True, True, False]
    assert non_finite_windows(np.full((2, 128, 8), 3e38, dtype=np.float32)) is None  # the sum overflows, no row does
    wide = sample_windows(2, seed=3).astype(np.float64)  # a handle caller's numpy default
    wide[0, 5, 2] = 1e39  # finite here, inf as the model reads it
    assert non_finite_windows(wide).tolist() == [True, False]


@pytest.mark.parametrize("model, version", PAIRS)
def test_training_bounds_each_version_by_its_targets_and_its_predictions_fall_within(repo: Path, model: str,
                                                                                     version: str):
    low, high = read_manifest(repo, model, version).output.bounds
    runtime = load_runtime(repo, model, version)
    out = runtime.predict(sample_windows(64, seed=4))
    assert low < 0 < high and np.isfinite(out).all() and runtime.rows_refused == 0
    assert low < out.min() and out.max() < high


def test_predictions_past_the_bounds_are_none_for_their_own_windows(repo: Path, monkeypatch: pytest.MonkeyPatch):
    runtime = load_runtime(repo, "patchtst", "v1")
    low, high = runtime.manifest.output.bounds
    blown_up = np.array([0.0, high * 1.01, low * 1.01, np.inf, high, low, 341_273.0], dtype=np.float32)
    monkeypatch.setattr(runtime, "_predict", lambda batch: blown_up[:len(batch)])  # as a net that blew up does
    out = runtime.predict(sample_windows(7, seed=3))
    np.testing.assert_array_equal(np.isnan(out), [False, True, True, True, False, False, True])
    assert runtime.rows_refused == 4
    assert not np.isnan(runtime.predict(sample_windows(1, seed=3))).any() and runtime.rows_refused == 4


def test_a_manifest_without_bounds_refuses_only_non_finite_predictions(repo: Path, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch):
    old = read_manifest(repo, "xgboost", "v1")  # as trainings before bounds wrote it
    shutil.copy(version_dir(repo, "xgboost", "v1") / "model.json", tmp_path / "model.json")
    write_version(tmp_path, "xgboost", "v1", "xgboost", {"model.json": tmp_path / "model.json"},
                  training=old.training, holdout=old.holdout)
    runtime = load_runtime(tmp_path, "xgboost", "v1")
    assert runtime.manifest.output.bounds is None
    monkeypatch.setattr(runtime, "_predict", lambda batch: np.array([1e30, -np.inf, np.nan], dtype=np.float32))
    np.testing.assert_array_equal(np.isnan(runtime.predict(sample_windows(3, seed=3))), [False, True, True])


@pytest.mark.parametrize("bounds", [(0.1, 0.1), (0.2, -0.2), (float("-inf"), 0.1), (0.0, float("nan"))])
def test_a_manifest_refuses_bounds_that_are_no_interval(repo: Path, bounds: tuple[float, float]):
    data = read_manifest(repo, "lstm", "v1").model_dump(mode="json")
    with pytest.raises(ValueError, match="bounds must be finite with low < high"):
        Manifest.model_validate({**data, "output": {**data["output"], "bounds": list(bounds)}})


def test_a_model_without_finite_predictions_for_ordinary_windows_does_not_load(repo: Path,
                                                                                monkeypatch: pytest.MonkeyPatch):
    runtime = load_runtime(repo, "xgboost", "v1")
    monkeypatch.setattr(runtime, "_predict", lambda batch: np.full(len(batch), np.nan))  # as broken weights do
    with pytest.raises(ModelLoadError, match="no prediction for ordinary windows"):
        runtime.warm_up()


@pytest.mark.parametrize("model, version", [(m, v) for m, v in PAIRS if m in NETS])
def test_a_net_asked_for_cuda_runs_its_state_dict_in_torch_where_torch_has_cuda(repo: Path, model: str, version: str):
    on_cpu = load_runtime(repo, model, version)
    asked = load_runtime(repo, model, version, device="cuda")
    assert (on_cpu.framework, asked.framework) == ("onnx", "torch" if torch.cuda.is_available() else "onnx")
    assert asked.device == ("cuda" if torch.cuda.is_available() else "cpu")
    # The torch runtime itself, as a GPU machine serves it: without CUDA it stays on CPU, and says so.
    on_cuda = load_runtime(repo, model, version, device="cuda", framework="torch")
    assert on_cuda.device == ("cuda" if torch.cuda.is_available() else "cpu")
    windows = sample_windows(9, seed=5)
    expected = on_cpu.predict(windows)
    np.testing.assert_allclose(on_cuda.predict(windows), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    # A tree has no other runtime: asking for CUDA changes nothing but the device it reports.
    assert load_runtime(repo, "xgboost", version, device="cuda").framework == "xgboost"


TREES = [(m, v) for m, v in PAIRS if FRAMEWORK[m] in ("xgboost", "lightgbm")]


@pytest.mark.parametrize("model, version", TREES)
def test_a_tree_predicts_through_onnx_runtime_what_its_framework_predicts(repo: Path, model: str, version: str):
    runtime = load_runtime(repo, model, version)
    assert runtime.engine == "onnxruntime"
    windows = sample_windows(500, seed=21)  # not the windows the conversion was checked on
    expected = runtime.framework_predict(engineer(windows))
    np.testing.assert_allclose(runtime.predict(windows), expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())


@pytest.mark.parametrize("version", VERSIONS)
def test_lightgbm_through_onnx_runtime_splits_features_equal_to_its_thresholds_as_lightgbm(repo: Path, version: str):
    """ONNX holds the thresholds in float32: a feature equal to one rounded up must not go the other way."""
    runtime = load_runtime(repo, "lightgbm", version)
    splits, nodes = [], [tree["tree_structure"] for tree in runtime.booster.dump_model()["tree_info"]]
    while nodes:
        node = nodes.pop()
        if "split_feature" in node:
            splits.append((node["split_feature"], np.float32(node["threshold"])))
            nodes += [node["left_child"], node["right_child"]]
    features = np.repeat(engineer(sample_windows(8, seed=21)), len(splits), axis=0)
    for row, (feature, threshold) in enumerate(splits * 8):
        features[row, feature] = threshold  # each split reached by some of the eight paths
    expected = runtime.framework_predict(features)
    np.testing.assert_allclose(np.ravel(runtime.features_predict(features)), expected, rtol=1e-5,
                               atol=1e-6 * np.abs(expected).max())


@pytest.mark.parametrize("conversion", ["fails", "disagrees"])
@pytest.mark.parametrize("model", ["xgboost", "lightgbm"])
def test_a_tree_whose_conversion_fails_or_disagrees_is_predicted_by_its_framework(
        repo: Path, model: str, conversion: str, monkeypatch: pytest.MonkeyPatch):
    cls = type(load_runtime(repo, model, "v1"))
    other_version, convert = load_runtime(repo, model, "v2"), cls._to_onnx

    def replacement(self: TreeRuntime) -> onnx.ModelProto:
        if conversion == "fails":
            raise RuntimeError("unsupported tree")
        return convert(other_version)  # converts and runs, but predicts otherwise

    monkeypatch.setattr(cls, "_to_onnx", replacement)
    runtime = load_runtime(repo, model, "v1")
    assert runtime.engine == runtime.framework == model
    windows = sample_windows(50, seed=22)
    expected = runtime.framework_predict(engineer(windows)).astype(np.float32)
    np.testing.assert_array_equal(runtime.predict(windows), expected)


def test_a_runtime_needs_its_artifact(repo: Path):
    with pytest.raises(ModelLoadError, match=r"TorchRuntime loads weights.pt; the manifest has \['model.json'\]"):
        load_runtime(repo, "xgboost", "v1", framework="torch")


@pytest.mark.parametrize("model", sorted(NETS))
def test_onnx_export_matches_torch(repo: Path, model: str, tmp_path: Path):
    manifest = read_manifest(repo, model, "v1")
    torch.manual_seed(0)
    net = build_net(manifest.architecture, manifest.hparams).eval()
    # Freshly initialised weights, exported and installed as a new version: torch and onnxruntime must agree.
    exported = tmp_path / "model.onnx"
    export_onnx(net, exported)
    write_version(tmp_path, model, "v1", "onnx", {"model.onnx": exported}, training=manifest.training,
                  holdout=manifest.holdout, architecture=manifest.architecture, hparams=manifest.hparams,
                  export=manifest.export)
    windows = sample_windows(5, seed=4)
    with torch.inference_mode():
        expected = net(torch.from_numpy(windows)).numpy()
    np.testing.assert_allclose(load_runtime(tmp_path, model, "v1").predict(windows), expected, rtol=1e-4, atol=1e-6)


def test_if_missing_retrains_a_version_an_older_training_serves_otherwise(repo: Path, tmp_path: Path):
    shutil.copytree(repo / "lstm", tmp_path / "lstm")
    for version in VERSIONS:  # as trainings before every net shipped ONNX wrote the LSTM: torch only
        old = read_manifest(repo, "lstm", version)
        weights = tmp_path / f"weights-{version}.pt"
        shutil.copy(version_dir(repo, "lstm", version) / "weights.pt", weights)
        write_version(tmp_path, "lstm", version, "torch", {"weights.pt": weights}, training=old.training,
                      holdout=old.holdout, architecture=old.architecture, hparams=old.hparams)
    assert ensure_repository(tmp_path, "tiny", ["lstm"]) is True
    assert {read_manifest(tmp_path, "lstm", v).framework for v in VERSIONS} == {FRAMEWORK["lstm"]}
    assert ensure_repository(tmp_path, "tiny", ["lstm"]) is False
    current = read_manifest(tmp_path, "lstm", "v1")  # as trainings before output bounds wrote it
    write_version(tmp_path, "lstm", "v1", current.framework,
                  {name: version_dir(tmp_path, "lstm", "v1") / name for name in current.artifacts},
                  training=current.training, holdout=current.holdout, architecture=current.architecture,
                  hparams=current.hparams, export=current.export)
    assert read_manifest(tmp_path, "lstm", "v1").output.bounds is None
    assert ensure_repository(tmp_path, "tiny", ["lstm"]) is True
    assert read_manifest(tmp_path, "lstm", "v1").output.bounds == current.output.bounds
    theirs = current.training.model_copy(update={"seed": 12345})  # a version another trainer wrote
    write_version(tmp_path, "lstm", "v1", "torch", {"weights.pt": version_dir(tmp_path, "lstm", "v1") / "weights.pt"},
                  training=theirs, holdout=current.holdout, architecture=current.architecture, hparams=current.hparams)
    assert ensure_repository(tmp_path, "tiny", ["lstm"]) is False
    assert read_manifest(tmp_path, "lstm", "v1").training.seed == 12345
    # Theirs and invalid (a newer schema, a key this code does not know): refused, left as it is.
    manifest_path = version_dir(tmp_path, "lstm", "v1") / MANIFEST
    manifest_path.write_text(json.dumps({**json.loads(manifest_path.read_text()), "schema_version": 2}))
    (version_dir(tmp_path, "lstm", "v1") / "my_notes.txt").write_text("mine")
    files = sorted(p.name for p in version_dir(tmp_path, "lstm", "v1").iterdir())
    with pytest.raises(ModelLoadError, match="did not write it"):
        ensure_repository(tmp_path, "tiny", ["lstm"])
    assert sorted(p.name for p in version_dir(tmp_path, "lstm", "v1").iterdir()) == files
    # Ours and invalid (an older training's rules): trained again.
    ours = json.loads(manifest_path.read_text()) | {"training": current.training.model_dump(mode="json")}
    manifest_path.write_text(json.dumps(ours))
    assert ensure_repository(tmp_path, "tiny", ["lstm"]) is True
    assert read_manifest(tmp_path, "lstm", "v1").output.bounds == current.output.bounds


def test_tampered_artifact_is_refused(repo: Path, tmp_path: Path):
    shutil.copytree(version_dir(repo, "xgboost", "v1"), tmp_path / "xgboost" / "v1")
    artifact = tmp_path / "xgboost" / "v1" / "model.json"
    data = bytearray(artifact.read_bytes())
    data[100] ^= 1
    artifact.write_bytes(bytes(data))
    with pytest.raises(ArtifactIntegrityError, match="model.json: manifest expects SHA-256 [0-9a-f]+, found SHA-256"):
        load_runtime(tmp_path, "xgboost", "v1")
    artifact.unlink()
    with pytest.raises(ArtifactIntegrityError, match="model.json: manifest expects .*the file is missing"):
        load_runtime(tmp_path, "xgboost", "v1")
    with pytest.raises(ModelLoadError, match="no manifest"):
        load_runtime(tmp_path, "xgboost", "v9")


def test_wrong_shape_is_input_shape_error(repo: Path):
    runtime = load_runtime(repo, "lightgbm", "v1")
    with pytest.raises(InputShapeError):
        runtime.predict(np.zeros((2, WINDOW, 7), dtype=np.float32))
    with pytest.raises(InputShapeError):
        runtime.predict(np.zeros((WINDOW, 8), dtype=np.float32))


def test_manifest_rejects_unknown_keys(repo: Path):
    data = json.loads((version_dir(repo, "lstm", "v1") / "manifest.json").read_text())
    Manifest.model_validate(data)
    with pytest.raises(ValueError):
        Manifest.model_validate({**data, "surprise": 1})


def test_list_versions(repo: Path):
    assert list_versions(repo) == {m: list(VERSIONS) for m in sorted(MEMBERS)}


def test_market_data_is_deterministic_and_aligned():
    a, b = generate_market(1000, 5), generate_market(1000, 5)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, generate_market(1000, 6))
    assert a.shape == (1000, len(FEATURES)) and (a[:, 0] > 0).all() and (a[:, 3] > 0).all()
    x, y = make_windows(a, 0, 1000)
    assert x.shape == (1000 - WINDOW, WINDOW, len(FEATURES))
    # A return is a small difference of two prices: compute the expected one in float64.
    assert y[3] == pytest.approx(float(a[3 + WINDOW, 0]) / float(a[3 + WINDOW - 1, 0]) - 1, rel=1e-5)
    assert engineer(x[:4]).shape == (4, len(FEATURE_NAMES))
