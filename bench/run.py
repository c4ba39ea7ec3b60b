"""The whole benchmark in one run: `make bench`, or `.venv/bin/python -m bench.run [options]`.

Order: the no-op and the ensemble under every ingress setting; the naive fan-out under the
ensemble's winning setting and the default; the FastAPI process; BentoML from its own venv;
then, under the winning setting, the deadline check, 2 vs 8 members and, where the machine has a
GPU, the ensemble with a GPU share for each net; last the member check.
Each server is started alone, warmed up with wrk, measured at each connection count while its
process tree is sampled, and stopped before the next starts. Writes bench/results/<stamp>.json
and .md (the tables for BENCHMARKS.md) and the PNG plots.

By default the committed code (`--source HEAD`) is measured from an export (bench/source.py),
so edits in progress never mix into a run; `--source worktree` measures the tree as it is.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import report
from bench.procmon import TreeMonitor
from bench.servers import (SETTINGS, Server, ServerFailed, bento_server, inproc_server, member_runtimes, predict_probe,
                           ray_server)
from bench.wrk import WrkRun, ensure_wrk, lua_script, make_bodies, run_wrk, threads_for

REPO = Path(__file__).resolve().parents[1]
ALL_SYSTEMS = ("noop", "ensemble", "naive", "fastapi", "bentoml", "deadline", "members", "gpu", "member-check")
READY_TIMEOUT_S = 300.0
# GPUs per net replica in the gpu part: the YAML's three nets scale to two replicas each, 0.9 in all.
GPU_SHARE = 0.15


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


@dataclass
class Bench:
    """One run's fixed inputs: wrk, the script, durations, where logs go."""

    wrk: str
    script: Path
    body: bytes
    duration_s: float
    warmup_s: float
    connections: list[int]
    log_dir: Path
    quiet_wait_s: float

    @contextmanager
    def serving(self, server: Server, probe) -> Iterator[Server]:
        """The server started (once the machine is quiet, or `quiet_wait_s` passed), ready, then stopped."""
        server.background_cores = wait_quiet(self.quiet_wait_s)
        log(f"starting {server.name} ({server.settings}); background load {server.background_cores:.2f} cores")
        try:
            server.start()
            server.wait_ready(probe, READY_TIMEOUT_S)
            log(f"  ready after {server.started_s:.1f} s")
            yield server
        finally:
            server.stop()

    def measure(self, server: Server, connections: int) -> dict[str, Any]:
        """One point: wrk at `connections` while the server's process tree is sampled."""
        run = WrkRun(server.url, connections, self.duration_s, threads_for(connections), self.script)
        wait_quiet(self.quiet_wait_s, server.pids())
        before, wrk_before = busy_cpu_s(), children_cpu_s()
        with TreeMonitor(server.pids()) as monitor:
            parsed = run_wrk(run, self.wrk)
        usage = monitor.usage()
        point = report.summarize(parsed, usage.cpu_s, usage.peak_rss_mb, connections)
        # Whatever else the machine ran meanwhile (its busy CPU less the server's and wrk's) shows
        # how far the point was disturbed: the two cores are shared.
        point["wrk_cpu_s"] = children_cpu_s() - wrk_before
        point["other_cpu_s"] = max(0.0, busy_cpu_s() - before - usage.cpu_s - point["wrk_cpu_s"])
        point["cpu_by_process"] = usage.cpu_by_process
        log(f"  {server.name} c={connections}: {point['rps']:.0f} req/s, p50 {point['p50_ms']:.2f} ms, "
            f"p99 {point['p99_ms']:.2f} ms, CPU {point['cpu_s']:.1f} s, RSS {point['peak_rss_mb']:.0f} MiB, "
            f"errors {point['non2xx'] + point['socket_errors']}, others' CPU {point['other_cpu_s']:.1f} s")
        return point

    def warm_up(self, server: Server) -> None:
        """Load at the highest connection count first: JIT-free paths warm, autoscalers see load."""
        if self.warmup_s > 0:
            run_wrk(WrkRun(server.url, max(self.connections), self.warmup_s, threads_for(max(self.connections)),
                           self.script), self.wrk)

    def sweep(self, server: Server, connections: list[int] | None = None,
              allow_degraded: bool = False, runtimes: bool = False) -> dict[str, Any]:
        """Start, warm up, measure each connection count, stop; the run's record (with `runtimes`,
        the runtime and device of each member version, from the ensemble's router)."""
        with self.serving(server, predict_probe(self.body, allow_degraded)):
            record: dict[str, Any] = {}
            if runtimes:
                try:
                    record["runtimes"] = member_runtimes(server.url)
                except (OSError, ValueError, KeyError) as exc:  # the points matter more than this list
                    record["runtimes_error"] = f"{type(exc).__name__}: {exc}"
            self.warm_up(server)
            points = [self.measure(server, c) for c in (connections or self.connections)]
        return {"name": server.name, "settings": server.settings, "started_s": round(server.started_s, 1),
                "info": server.info, "background_cores": round(server.background_cores, 2),
                "pids": sorted(server.known), **record, "points": points}


def busy_cpu_s() -> float:
    """CPU seconds all cores have spent on anything but idling, since boot."""
    import psutil

    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def children_cpu_s() -> float:
    """CPU seconds of this process's waited-for children (wrk; servers count only once stopped)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wait_quiet(max_wait_s: float, exclude: list[int] = (), cores: float = 0.3, window_s: float = 2.0) -> float:
    """Wait (up to `max_wait_s`) until work other than the trees under `exclude` uses under `cores`.

    Returns the last reading, in cores.
    """
    deadline = time.monotonic() + max_wait_s
    while True:
        before = busy_cpu_s()
        with TreeMonitor(list(exclude)) as ours:
            time.sleep(window_s)
        used = max(0.0, busy_cpu_s() - before - ours.usage().cpu_s) / window_s
        if used < cores or time.monotonic() > deadline:
            return used
        log(f"  waiting for a quiet machine: {used:.1f} cores busy with other work")


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import psutil
    import ray

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    wrk = subprocess.run([shutil.which("wrk") or "wrk", "-v"], capture_output=True, text=True).stdout.split("\n")[0]
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "kernel": platform.release(), "os": platform.platform(), "python": platform.python_version(),
            "ray": ray.__version__, "wrk": wrk.strip(), "gpu": ", ".join(gpu_names()) or "none"}


def gpu_names() -> list[str]:
    """The machine's NVIDIA GPUs, by name (none without `nvidia-smi`)."""
    if not shutil.which("nvidia-smi"):
        return []
    listed = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True)
    return [line.strip() for line in listed.stdout.splitlines() if line.strip()]


class Stages:
    """Runs each part of the benchmark; one that fails is logged and recorded, and the run goes on."""

    def __init__(self, results: dict[str, Any]) -> None:
        self.failures: dict[str, str] = results.setdefault("failures", {})
        self.retried: dict[str, str] = results.setdefault("retried", {})

    def attempt(self, name: str, part: Callable[[], Any]) -> Any:
        """`part()`, once more if its server failed (Ray's HAProxy can pick an internal port that a
        client socket of the machine holds at that moment); a second failure is recorded."""
        for tries_left in (1, 0):
            try:
                return part()
            except Exception as exc:  # noqa: BLE001 - one broken server must not lose the others' figures
                reason = f"{type(exc).__name__}: {str(exc)[-1500:]}"
                if tries_left and isinstance(exc, ServerFailed):
                    log(f"RETRYING {name} once: {reason}")
                    self.retried[name] = reason
                    continue
                log(f"FAILED {name}: {reason}")
                self.failures[name] = reason
        return None


def run_all(opts: argparse.Namespace) -> dict[str, Any]:
    results_dir = Path(opts.results_dir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_dir = results_dir / "logs" / stamp
    log_dir.mkdir(parents=True, exist_ok=True)
    body = make_bodies(4)
    script = log_dir / "post.lua"
    script.write_text(lua_script(body))
    bench = Bench(ensure_wrk(), script, body[0], opts.duration, opts.warmup, opts.connections, log_dir,
                  opts.quiet_wait)
    systems = set(opts.systems)
    source = json.loads(os.environ.get("BENCH_SOURCE", "{}"))
    results: dict[str, Any] = {
        "stamp": stamp, "command": source.get("command", opts.command), "source": source,
        "machine": machine(), "duration_s": opts.duration, "warmup_s": opts.warmup,
        "connections": opts.connections, "settings": {s: SETTINGS[s] for s in opts.settings}, "runs": [],
    }
    stages = Stages(results)
    runs = results["runs"]

    def sweep(system: str, server: Server) -> None:
        record = stages.attempt(server.name, lambda: bench.sweep(server, runtimes=system == "ensemble"))
        if record is not None:
            runs.append({"system": system, **record})

    for app in ("noop", "ensemble"):
        for setting in opts.settings if app in systems else []:
            sweep(app, ray_server(f"{app}-{setting}", app, log_dir, setting))
    win = report.winner(runs) or opts.settings[0]
    for setting in dict.fromkeys([win, "default"]) if "naive" in systems else []:
        sweep("naive", ray_server(f"naive-{setting}", "naive", log_dir, setting))
    if "fastapi" in systems:
        sweep("fastapi", inproc_server(log_dir))
    if "bentoml" in systems:
        from bench import venvs

        venv = stages.attempt("bentoml venv", lambda: venvs.ensure("bentoml", Path(opts.venvs_dir), log=log))
        if venv is not None:
            sweep("bentoml", bento_server(venv, log_dir))
    if "deadline" in systems:
        server = ray_server(f"deadline-{win}", "deadline", log_dir, win)
        results["deadline"] = stages.attempt(server.name, lambda: bench.sweep(server, allow_degraded=True))
    if "members" in systems:
        results["members"] = {}
        for n in (2, 8):
            server = ray_server(f"members{n}-{win}", "members", log_dir, win, ["--members", str(n)])
            record = stages.attempt(server.name, lambda: bench.sweep(server, [max(opts.connections)]))
            if record is not None:
                results["members"][str(n)] = record["points"][0]
    if "gpu" in systems:
        if opts.fake_gpus or gpu_names():
            gpus = ["--gpus", str(opts.fake_gpus)] if opts.fake_gpus else []
            server = ray_server(f"gpu-{win}", "gpu", log_dir, win, ["--gpu-share", str(opts.gpu_share), *gpus])
            if (record := stages.attempt(server.name, lambda: bench.sweep(server, runtimes=True))) is not None:
                results["gpu"] = {**record, "gpu_share": opts.gpu_share, "fake_gpus": opts.fake_gpus}
        else:
            results["gpu"] = {"skipped": "no GPU on this machine (no nvidia-smi)"}
    if "member-check" in systems:
        server = ray_server("member-check", "member-check", log_dir, win, ["--seconds", str(opts.member_seconds)])

        def check() -> dict[str, Any]:
            with bench.serving(server, lambda url: True):
                return {"batch": 64, **server.info["member_check"]}

        results["member_check"] = stages.attempt(server.name, check)
    return results


def write(results: dict[str, Any], results_dir: Path, plots_dir: Path | None) -> Path:
    path = results_dir / f"{results['stamp']}.json"
    path.write_text(json.dumps(results, indent=1))
    (results_dir / "latest.json").write_text(path.read_text())
    tables = report.markdown(results)
    path.with_suffix(".md").write_text(tables)
    print(tables)
    if plots_dir is not None:
        from bench.plots import draw

        for png in draw(results, plots_dir):
            log(f"plot {png}")
    log(f"results {path}")
    return path


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", default="HEAD", help="git ref to measure (exported), or `worktree`")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of each measured point")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before a server's points")
    parser.add_argument("--connections", type=lambda s: [int(c) for c in s.split(",")], default=[1, 16, 64])
    parser.add_argument("--settings", type=lambda s: s.split(","), default=list(SETTINGS),
                        help=f"Ray Serve ingress settings, from {','.join(SETTINGS)}")
    parser.add_argument("--systems", type=lambda s: s.split(","), default=list(ALL_SYSTEMS),
                        help=f"what to run, from {','.join(ALL_SYSTEMS)}")
    parser.add_argument("--quiet-wait", type=float, default=60.0,
                        help="most seconds to wait before each server for other work on the machine to end")
    parser.add_argument("--gpu-share", type=float, default=GPU_SHARE, help="gpu: the GPUs each net replica asks for")
    parser.add_argument("--fake-gpus", type=float, default=0.0,
                        help="gpu: declare this many GPUs to Ray on a machine without one, to try the path "
                             "(the nets then run on the CPU and say so)")
    parser.add_argument("--member-seconds", type=float, default=2.0, help="seconds per member-check measurement")
    parser.add_argument("--results-dir", default=str(REPO / "bench" / "results"))
    parser.add_argument("--plots-dir", default=str(REPO / "bench" / "plots"))
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--venvs-dir", default=str(REPO / "bench" / ".venvs"))
    opts = parser.parse_args(argv)
    unknown = sorted(set(opts.settings) - set(SETTINGS)) + sorted(set(opts.systems) - set(ALL_SYSTEMS))
    if unknown:
        parser.error(f"unknown settings or systems: {unknown}")
    opts.command = " ".join(["python -m bench.run", *(argv if argv is not None else sys.argv[1:])])
    return opts


def in_export(opts: argparse.Namespace, argv: list[str]) -> int:
    """Run this harness again inside an export of `opts.source`, writing results back here."""
    from bench import source

    root, sha = source.prepare(opts.source, log=log)
    info = {"ref": opts.source, "commit": sha, "uncommitted_outside_bench": source.dirty_paths(),
            "command": opts.command}
    inner = [sys.executable, "-m", "bench.run", *argv, "--source", "worktree", "--results-dir",
             str(Path(opts.results_dir).resolve()), "--plots-dir", str(Path(opts.plots_dir).resolve()),
             "--venvs-dir", str(Path(opts.venvs_dir).resolve())]
    env = {**os.environ, "PYTHONPATH": str(root), "BENCH_SOURCE": json.dumps(info)}
    return subprocess.run(inner, cwd=root, env=env).returncode


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    opts = parse(argv)
    if opts.source != "worktree":
        return in_export(opts, argv)
    # SIGTERM unwinds like Ctrl-C, so every server's `finally` stops its process group.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    results_dir = Path(opts.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    results = run_all(opts)
    results["wall_s"] = round(time.monotonic() - started, 1)
    write(results, results_dir, None if opts.no_plots else Path(opts.plots_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
