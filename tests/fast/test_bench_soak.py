"""bench.soak: its graph and growth figures without Ray, and the whole soak at tiny durations."""
from pathlib import Path

import pytest
import yaml

from bench.apps.graph_args import graph_file, yaml_args
from bench.soak import growth, soak_graph
from tests.fast.bench_runs import left_running, need_wrk, run_bench


def test_soak_graph_caps_the_prediction_log_and_keeps_the_rest(tmp_path: Path) -> None:
    args = yaml_args(soak_graph(1234, tmp_path))
    assert args["ledger"]["max_predictions"] == 1234
    assert {k: v for k, v in args.items() if k != "ledger"} == {k: v for k, v in yaml_args().items() if k != "ledger"}
    elsewhere = yaml.safe_load(soak_graph(1234, tmp_path, "/models").read_text())["applications"]
    assert {app["args"]["model_root"] for app in elsewhere} == {"/models"}
    assert yaml_args(graph_file(tmp_path / "same.yaml")) == yaml_args()


def test_growth_is_the_slope_of_the_second_half() -> None:
    # Flat after a warm-up jump: no growth; then a steady 2 MiB a minute: 2.
    flat = [{"at_s": 30 * i, "rss_mib": {"router": 100.0 if i else 60.0}} for i in range(8)]
    assert growth(flat, "router") == {"first_mib": 60.0, "last_mib": 100.0, "max_mib": 100.0,
                                      "second_half_mib_per_min": 0.0}
    leaking = [{"at_s": 30 * i, "rss_mib": {"router": 100.0 + i}} for i in range(8)]
    assert growth(leaking, "router")["second_half_mib_per_min"] == pytest.approx(2.0)


@pytest.mark.serve
def test_soak_runs_windows_with_labels_and_leaves_nothing_running(tmp_path: Path, tiny_repo: Path) -> None:
    need_wrk()
    results = run_bench("bench.soak", ["--minutes", "0.1", "--window-s", "3", "--connections", "4",
                                       "--max-predictions", "1000", "--model-root", str(tiny_repo)],
                        tmp_path / "soak.json")
    window = results["windows"][-1]
    assert window["rps"] > 0 and window["non2xx"] == 0 and window["predictions_logged"] > 0
    assert window["rss_mib"]["router"] > 0 and window["rss_mib"]["members"] > 0 and window["state_mib"] > 0
    assert window["labels_applied"] > 0 and window["labelled_failures"] == 0
    assert set(results["growth"]) == {"router", "control plane", "members", "haproxy", "the rest"}
    assert len(results["pids"]) > 3 and not left_running(results["pids"])
