"""The wrk side of the benchmark harness: Lua script, command line, parsing. No wrk, no Ray."""
import json
import re

import pytest

from bench.wrk import JSON_MARKER, PERCENTILES, WrkRun, _long_string, lua_script, parse_wrk, threads_for


def test_long_string_cannot_be_closed_by_its_content() -> None:
    text = 'a]]b]=]c'
    literal = _long_string(text)
    assert literal == "[==[" + text + "]==]"


def test_lua_script_posts_every_body_in_rotation() -> None:
    bodies = [b'{"window": [[1.0]], "request_id": "bench-0"}', b'{"x": "]=]"}']
    script = lua_script(bodies, path="/v1/predict")
    assert 'wrk.method = "POST"' in script
    assert 'wrk.path = "/v1/predict"' in script
    assert "[=[" + bodies[0].decode() + "]=]" in script and "[==[" + bodies[1].decode() + "]==]" in script
    assert json.dumps('"degraded":true') in script  # counted in wrk's response()
    assert f"'{JSON_MARKER}" in script
    for p in PERCENTILES:
        assert re.search(rf"\b{re.escape(repr(p))}\b", script)


def wrk_output(requests: int = 1000, duration_us: int = 2_000_000, non2xx: int = 0) -> str:
    percentiles = {str(p): int(1000 + 10 * p) for p in PERCENTILES}
    payload = {"duration_us": duration_us, "requests": requests, "bytes": 123, "non2xx": non2xx, "marked": 7,
               "errors": {"connect": 0, "read": 1, "write": 0, "status": 0, "timeout": 2},
               "latency_us": {"min": 900, "max": 9000, "mean": 1500.0, "stdev": 10.0, "percentiles": percentiles}}
    return "Running 2s test @ http://127.0.0.1:1\n" + JSON_MARKER + json.dumps(payload) + "\n"


def test_parse_wrk_reads_the_json_line_in_seconds_and_milliseconds() -> None:
    parsed = parse_wrk(wrk_output(non2xx=300))
    assert parsed["requests"] == 1000 and parsed["rps"] == pytest.approx(350.0)  # the 2xx answers, per second
    assert parsed["latency_ms"]["p50"] == pytest.approx(1.5)
    assert parsed["latency_ms"]["p99"] == pytest.approx(1.99)
    assert parsed["non2xx"] == 300 and parsed["marked"] == 7
    assert parsed["socket_errors"] == 3  # connect, read, write, timeout; status is wrk's non-2xx count
    assert [q for q, _ in parsed["cdf_ms"]] == sorted(float(p) for p in PERCENTILES)


def test_parse_wrk_without_the_json_line_says_so() -> None:
    with pytest.raises(ValueError, match="BENCH_JSON"):
        parse_wrk("unable to connect to 127.0.0.1:1 Connection refused\n")


def test_wrk_targets_loopback_only_with_whole_seconds(tmp_path) -> None:
    run = WrkRun("http://127.0.0.1:8000", connections=16, duration_s=2.4, threads=2, script=tmp_path / "s.lua")
    command = run.command("wrk")
    assert command[command.index("-d") + 1] == "2s" and command[-1] == "http://127.0.0.1:8000"
    for url in ("http://10.0.0.1:8000", "http://example.com", "http://localhost.example:1"):
        with pytest.raises(ValueError, match="127.0.0.1"):
            WrkRun(url, 1, 1, 1, tmp_path / "s.lua").command()


def test_threads_never_exceed_connections_or_cores() -> None:
    assert [threads_for(c) for c in (1, 2, 16, 64)] == [1, 2, 2, 2]
