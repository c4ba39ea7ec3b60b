"""The benchmark harness's arithmetic: the winning ingress, ratios to (1) and (4), targets, tables, plots."""
import pytest

from bench import member_check, report


def point(connections: int, rps: float, p50: float = 1.0, p99: float = 2.0, cpu: float = 4.0) -> dict:
    wrk = {"requests": int(rps * 8), "duration_s": 8.0, "rps": rps, "latency_ms": {"p50": p50, "p99": p99},
           "non2xx": 0, "socket_errors": 0, "marked": 0, "cdf_ms": [(50.0, p50), (99.0, p99), (100.0, 2 * p99)]}
    return report.summarize(wrk, cpu, 500.0, connections)


def run(system: str, settings: str, rps_by_conns: dict[int, float], p50: float = 1.0) -> dict:
    return {"system": system, "settings": settings, "points": [point(c, r, p50) for c, r in rps_by_conns.items()]}


# The machine slowed to half in the second round: the in-process loop and the paths with it.
BESIDE = [1000.0, 500.0, 1000.0]
SERVED = {"direct channel": [800.0, 450.0, 600.0], "direct channel, 8 in flight": [700.0, 300.0, 900.0]}


def rates(rows_per_s: list[float]) -> dict:
    return member_check.median_rate([{"rows_per_s": r} for r in rows_per_s])


def member_check_results() -> dict:
    return {"batch": 64, "in_process": {"xgboost-v1": {"rows_per_s": 1100.0}},
            "beside": {"xgboost-v1": rates(BESIDE)},
            "serve": {"handle": {"xgboost-v1": {"rows_per_s": 500.0}},
                      **{path: {"xgboost-v1": rates(rows)} for path, rows in SERVED.items()}},
            "paired": {"xgboost-v1": member_check.paired_ratios(BESIDE, SERVED)}}


@pytest.fixture
def results() -> dict:
    runs = [
        run("noop", "default", {1: 100, 64: 300}, p50=0.5),
        run("noop", "haproxy", {1: 900, 64: 2000}, p50=0.5),
        run("ensemble", "default", {1: 50, 64: 400}),
        run("ensemble", "haproxy", {1: 400, 64: 1200}, p50=1.5),
        run("naive", "haproxy", {1: 100, 64: 200}),
        run("fastapi", "uvicorn", {1: 300, 64: 600}),
        run("bentoml", "bentoml", {1: 100, 64: 150}),
    ]
    return {
        "runs": runs,
        "members": {"2": point(64, 1000), "8": point(64, 800)},
        "member_check": member_check_results(),
        "deadline": {"points": [point(16, 500, p99=28.0)]},
    }


def test_summarize_derives_cpu_per_request() -> None:
    p = point(16, 100.0, cpu=8.0)
    assert p["requests"] == 800 and p["cpu_ms_per_req"] == pytest.approx(10.0)
    failing = report.summarize({**p, "latency_ms": {"p50": 1.0, "p99": 2.0}, "non2xx": 400}, 8.0, 500.0, 16)
    assert failing["cpu_ms_per_req"] == pytest.approx(20.0)  # per answer with a 2xx status


def test_a_ray_systems_part_that_failed_is_not_measured_by_another_setting(results: dict) -> None:
    """The naive fan-out under the winner failed; its run under the default setting is 2.5x slower."""
    runs = [r for r in results["runs"] if r["system"] != "naive"] + [run("naive", "default", {1: 40, 64: 80})]
    verdicts = {t["target"].split(" at ")[0]: t for t in report.targets({**results, "runs": runs})}
    assert verdicts["ensemble / naive fan-out (2) throughput"]["met"] is None
    assert report.run_for(runs, "fastapi", "haproxy")["settings"] == "uvicorn"  # a peer's only run


def test_the_winner_is_the_ensembles_fastest_setting_at_the_most_connections(results: dict) -> None:
    assert report.winner(results["runs"]) == "haproxy"
    rows = {(s, p["connections"]): r["settings"] for s, r, p in report.main_rows(results["runs"])}
    assert rows[("noop", 64)] == "haproxy" and rows[("ensemble", 1)] == "haproxy"
    assert rows[("fastapi", 64)] == "uvicorn" and len(rows) == 10


def test_every_figure_is_a_ratio_to_the_best_noop_and_to_fastapi(results: dict) -> None:
    by_key = {(r["system"], r["connections"], r["vs"]): r for r in report.ratios(results["runs"])}
    assert by_key[("ensemble", 64, "noop")]["rps"] == pytest.approx(0.6)
    assert by_key[("ensemble", 64, "fastapi")]["rps"] == pytest.approx(2.0)
    assert by_key[("ensemble", 1, "noop")]["p50_ms"] == pytest.approx(3.0)
    assert by_key[("fastapi", 1, "fastapi")]["peak_rss_mb"] == pytest.approx(1.0)


def test_targets_are_judged_from_the_same_run(results: dict) -> None:
    verdicts = {t["target"].split(" at ")[0].split(":")[0]: t for t in report.targets(results)}
    assert verdicts["ensemble / FastAPI (4) throughput"]["met"] is True  # 2.0x >= 1.5x
    assert verdicts["ensemble / naive fan-out (2) throughput"]["met"] is True  # 6x
    assert verdicts["ensemble / best no-op (1) throughput"]["met"] is True  # 0.6x
    assert verdicts["ensemble p50 - no-op p50"]["value"] == pytest.approx(1.0)
    assert verdicts["8 members / 2 members throughput"]["met"] is False  # 0.8x < 0.85x
    assert verdicts["xgboost-v1"]["met"] is True  # the better paired path, 0.8x
    assert verdicts["xgboost-v1"]["value"] == pytest.approx(0.8)
    assert "(direct channel)" in verdicts["xgboost-v1"]["target"] and "3 paired rounds" in verdicts["xgboost-v1"]["target"]
    assert verdicts["deadline p99"]["met"] is True


def test_the_member_check_pairs_each_round_with_the_runtime_measured_beside_it() -> None:
    paired = member_check.paired_ratios(BESIDE, SERVED)
    # Each round's ratios: 0.8, 0.9, 0.6 and 0.7, 0.6, 0.9; the medians of the rates would say 600 / 1000.
    assert paired["by_path"] == pytest.approx({"direct channel": 0.8, "direct channel, 8 in flight": 0.7})
    assert paired["path"] == "direct channel" and paired["ratio"] == pytest.approx(0.8)
    median = member_check.median_rate([{"rows_per_s": r, "calls": i} for i, r in enumerate(SERVED["direct channel"])])
    assert median == {"rows_per_s": 600.0, "calls": 2, "rounds": SERVED["direct channel"]}


def test_an_unmeasured_target_is_not_a_failure() -> None:
    missing = report.targets({"runs": [run("noop", "default", {1: 100, 64: 300})]})
    assert missing and all(t["met"] is None for t in missing)


def test_a_run_of_one_part_judges_that_parts_targets() -> None:
    verdicts = report.targets({"runs": [], "member_check": member_check_results()})
    assert [t["met"] for t in verdicts] == [True] and verdicts[0]["target"].startswith("xgboost-v1: Serve")


def test_markdown_has_every_table(results: dict) -> None:
    text = report.markdown(results)
    for heading in ("Main comparison", "Ratios", "ingress settings side by side", "Deadline", "2 vs 8",
                    "in Serve vs in-process", "Targets"):
        assert heading in text
    assert "**haproxy**" in text and "| 64 | (3) this ensemble | haproxy | 1200 |" in text
    assert "| xgboost-v1 | 1100 | 1000 | 500 | 600 | 700 | direct channel 0.80x, direct channel, 8 in flight 0.70x |" in text


def test_the_gpu_run_says_where_each_net_ran(results: dict) -> None:
    results["machine"] = {"gpu": "NVIDIA H100"}
    runtimes = {"xgboost-v1": {"runtime": "xgboost", "device": "cpu"}, "lstm-v1": {"runtime": "torch", "device": "cuda"},
                "nhits-v1": {"runtime": "torch", "device": "cpu"}}
    results["gpu"] = {"runtimes": runtimes, "gpu_share": 0.15, "fake_gpus": 0.0, "points": [point(64, 900)]}

    def verdict() -> dict:
        (found,) = [t for t in report.targets(results) if t["target"].startswith("nets given a GPU share")]
        return found

    assert verdict()["value"] == pytest.approx(0.5) and verdict()["met"] is False  # a net left on the CPU
    text = report.markdown(results)
    assert "lstm-v1 torch on cuda, nhits-v1 torch on cpu" in text and "| 64 | 900 |" in text
    results["gpu"] = {**results["gpu"], "runtimes": {"xgboost-v1": runtimes["xgboost-v1"]}}
    assert verdict()["value"] == 0.0  # no net in torch: asking for CUDA changed nothing
    results["gpu"] = {"skipped": "no GPU on this machine (no nvidia-smi)"}
    assert verdict()["met"] is None and "Not measured: no GPU on this machine" in report.markdown(results)


def test_plots_are_pngs(results: dict, tmp_path) -> None:
    pytest.importorskip("matplotlib", reason="matplotlib is the `bench` extra")
    from bench.plots import draw

    written = draw(results, tmp_path)
    assert {p.name for p in written} == {"throughput.png", "settings.png", "latency_cdf_1.png", "latency_cdf_64.png"}
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in written)
