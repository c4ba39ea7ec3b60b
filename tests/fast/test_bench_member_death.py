"""bench.member_death: the whole run at tiny durations (a member replica killed under load)."""
from pathlib import Path

import pytest

from tests.fast.bench_runs import left_running, need_wrk, run_bench


@pytest.mark.serve
def test_a_killed_member_degrades_answers_until_its_replacement_answers(tmp_path: Path, tiny_repo: Path) -> None:
    need_wrk()
    results = run_bench("bench.member_death", ["--members", "nhits-v1", "--seconds", "3", "--kill-at", "1",
                                               "--connections", "4", "--model-root", str(tiny_repo)],
                        tmp_path / "member_death.json")
    (death,) = results["deaths"]
    assert death["member"] == "nhits-v1" and set(death["statuses"]) == {"200"} and death["socket_errors"] == 0
    assert death["degraded"] > 0 and death["whole_again_after_s"] > 0 and death["replaced"]
    assert len(results["pids"]) > 3 and not left_running(results["pids"])
