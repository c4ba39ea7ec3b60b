"""What more members cost the router, and why: its CPU per answer, its members' calls, its core.

`python -m bench.core_sharing [--members 2,8] [--seconds 8] [--ghosts]`, under `make serve`'s
settings like the harness. For each member count it starts the harness's members application
(`bench.serve_runner --app members`), warms it up and, at 64 connections of wrk:

- requests per second and the router's CPU per answer (user and system, from its process);
- each member version's calls over its channel and the rows each carried (`channel_calls`
  from its `/members/...` info route);
- with `perf` installed (Debian's `linux-perf`; run as root), a 3 s trace of the scheduler:
  how often the router's event-loop thread is preempted and what runs next on its CPU, and how
  many wakeups it issues to member replicas and how many of those land on its own CPU.

`--ghosts`: the two-member application, in rounds with and without six processes that run the
other six model versions' runtimes (one thread each, nice 15 as Ray's workers) 50 times a second
on 96 rows, unrelated to the router: what CPU that other processes take, alone, does to it.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.synchronize import Event, Semaphore
from pathlib import Path
from typing import Any

import psutil

from bench.apps.ensemble_apps import EIGHT
from bench.procmon import label, tree
from bench.servers import REPO, Server, predict_probe, ray_server
from bench.wrk import WrkRun, lua_script, make_bodies, run_wrk

CONNECTIONS = 64
TRACE_S = 3
GHOST_HZ, GHOST_ROWS = 50.0, 96
_EVENT = re.compile(r"\s*.+?\s+(\d+)\s+\[(\d+)\]\s+[\d.]+:\s+sched:(sched_switch|sched_wakeup):\s+(.*)")
_SWITCH = re.compile(r"prev_pid=(\d+) .*prev_state=(\S+) ==> .*next_pid=(\d+)")
_WAKEUP = re.compile(r"pid=(\d+) .*target_cpu=(\d+)")


@dataclass
class SchedSummary:
    """The router's event-loop thread in a scheduler trace, counts per role of the other threads."""

    seconds: float
    preempted: int = 0  # switched out while runnable
    slept: int = 0  # switched out to wait
    next_after_preempted: Counter[str] = field(default_factory=Counter)
    wakeups: Counter[str] = field(default_factory=Counter)  # issued by the router's thread
    wakeups_on_its_cpu: Counter[str] = field(default_factory=Counter)


def parse_sched(lines: list[str], loop_tid: int, roles: dict[int, str], seconds: float) -> SchedSummary:
    """Summarise `perf script` lines of sched_switch and sched_wakeup for thread `loop_tid`;
    `roles` names other threads by id ("other" where absent)."""
    summary = SchedSummary(seconds)
    for line in lines:
        event = _EVENT.match(line)
        if event is None:
            continue
        tid, cpu, kind, rest = int(event[1]), int(event[2]), event[3], event[4]
        if kind == "sched_switch":
            switch = _SWITCH.search(rest)
            if switch is None or int(switch[1]) != loop_tid:
                continue
            if switch[2].startswith("R"):
                summary.preempted += 1
                summary.next_after_preempted[roles.get(int(switch[3]), "other")] += 1
            else:
                summary.slept += 1
        elif tid == loop_tid and (wakeup := _WAKEUP.search(rest)) is not None:
            role = roles.get(int(wakeup[1]), "other")
            summary.wakeups[role] += 1
            summary.wakeups_on_its_cpu[role] += int(wakeup[2]) == cpu
    return summary


def role(process_label: str) -> str:
    """A Ray process title as a role: router, member, or the deployment or daemon's name."""
    if "EnsembleRouter" in process_label:
        return "router"
    if process_label.startswith("ray::ServeReplica:") and ":bench:" not in process_label:
        return "member"
    return process_label.rsplit(":", 1)[-1]


def trace(server: Server, router: psutil.Process, seconds: float) -> SchedSummary | None:
    """The scheduler's view of the router's busiest thread for `seconds`, None without perf."""
    if shutil.which("perf") is None:
        return None
    roles = {}
    for proc in tree(server.pids()):
        try:
            roles.update(dict.fromkeys((t.id for t in proc.threads()), role(label(proc))))
        except psutil.NoSuchProcess:
            continue
    loop_tid = max(router.threads(), key=lambda t: t.user_time + t.system_time).id
    data = Path(tempfile.mkdtemp(prefix="sched-")) / "sched.data"
    subprocess.run(["perf", "record", "-q", "-e", "sched:sched_switch,sched:sched_wakeup", "-a", "-o", str(data),
                    "--", "sleep", str(seconds)], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    script = subprocess.run(["perf", "script", "-i", str(data)], check=True, capture_output=True, text=True)
    shutil.rmtree(data.parent, ignore_errors=True)
    return parse_sched(script.stdout.splitlines(), loop_tid, roles, seconds)


def member_calls(server: Server, names: list[str]) -> dict[str, int]:
    calls = {}
    for name in names:
        with urllib.request.urlopen(f"{server.url}/members/{name}", timeout=5) as response:
            calls[name] = json.loads(response.read())["channel_calls"]
    return calls


def router_of(server: Server) -> psutil.Process:
    return next(p for p in tree(server.pids()) if role(label(p)) == "router")


def measure(server: Server, script: Path, seconds: float) -> dict[str, Any]:
    """One point at CONNECTIONS: throughput, the router's CPU per answer."""
    router = router_of(server)
    before, started = router.cpu_times(), time.monotonic()
    result = run_wrk(WrkRun(server.url, CONNECTIONS, seconds, 2, script))
    # The wall time the router's CPU was read over: wrk runs whole seconds, and starts and stops.
    after, wall_s = router.cpu_times(), time.monotonic() - started
    answers = max(1, result["requests"])
    return {"rps": round(result["rps"]), "router_user_ms": 1000 * (after.user - before.user) / answers,
            "router_system_ms": 1000 * (after.system - before.system) / answers,
            "router_cores": (after.user + after.system - before.user - before.system) / wall_s,
            "requests": result["requests"], "wall_s": wall_s}


@contextmanager
def members_server(n: int, script: Path, body: bytes, log_dir: Path) -> Iterator[Server]:
    """The harness's `n`-member application under `make serve`'s settings, ready and warmed up, then stopped."""
    server = ray_server(f"members{n}", "members", log_dir, "throughput+haproxy", ["--members", str(n)])
    server.start()
    try:
        server.wait_ready(predict_probe(body), 300)
        run_wrk(WrkRun(server.url, CONNECTIONS, 4, 2, script))
        yield server
    finally:
        server.stop()


def members_point(n: int, seconds: float, script: Path, body: bytes, log_dir: Path) -> dict[str, Any]:
    with members_server(n, script, body, log_dir) as server:
        names = [f"{model}_{version}-v1" for model, version in EIGHT[:n]]
        before = member_calls(server, names)
        point = measure(server, script, seconds)
        calls = {name: count - before[name] for name, count in member_calls(server, names).items()}
        point["calls_per_s"] = {name: round(count / point["wall_s"]) for name, count in calls.items()}
        point["rows_per_call"] = {name: round(point["requests"] / count, 1) for name, count in calls.items() if count}
        # The trace runs under load of its own, after the measured point.
        with subprocess.Popen(WrkRun(server.url, CONNECTIONS, TRACE_S + 2, 2, script).command(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as load:
            time.sleep(1)  # wrk connected and running before the trace starts
            point["sched"] = trace(server, router_of(server), TRACE_S)
            load.wait()
        return point


def ghost(model: str, version: str, loaded: Semaphore, stop: Event) -> None:
    """Run one model version's runtime GHOST_HZ times a second on GHOST_ROWS rows until `stop`;
    `loaded` is released once the runtime is loaded."""
    os.nice(15)
    from models.data import sample_windows
    from models.repository import load_runtime

    runtime = load_runtime(str(REPO / "model_repo"), model, version, num_threads=1, device="cpu")
    windows = sample_windows(GHOST_ROWS, seed=3)
    loaded.release()
    due = time.monotonic()
    while not stop.is_set():
        runtime.predict(windows)
        due += 1.0 / GHOST_HZ
        stop.wait(max(0.0, due - time.monotonic()))


def cpu_seconds(processes: list[multiprocessing.Process]) -> float:
    return sum(sum(psutil.Process(process.pid).cpu_times()[:2]) for process in processes)


def ghost_rounds(rounds: int, seconds: float, script: Path, body: bytes, log_dir: Path) -> list[dict[str, Any]]:
    points = []
    with members_server(2, script, body, log_dir) as server:
        for _ in range(rounds):
            for with_ghosts in (False, True):
                stop, loaded = multiprocessing.Event(), multiprocessing.Semaphore(0)
                ghosts = [multiprocessing.Process(target=ghost, args=(model, version, loaded, stop))
                          for model, version in EIGHT[2:]] if with_ghosts else []
                for process in ghosts:
                    process.start()
                for _ in ghosts:
                    if not loaded.acquire(timeout=60):
                        raise RuntimeError("a ghost did not load its runtime within 60 s")
                cpu_before = cpu_seconds(ghosts)
                point = measure(server, script, seconds)
                point["ghost_cores"] = (cpu_seconds(ghosts) - cpu_before) / point["wall_s"]
                stop.set()
                for process in ghosts:
                    process.join(10)
                points.append({"ghosts": with_ghosts, **point})
    return points


def describe(n: int, point: dict[str, Any]) -> str:
    cpu = point["router_user_ms"] + point["router_system_ms"]
    lines = [f"{n} members: {point['rps']} req/s; router {cpu:.3f} CPU ms per answer "
             f"(system {point['router_system_ms']:.3f}) at {point['router_cores']:.2f} core",
             f"  calls per second per member {sorted(point['calls_per_s'].values())}, "
             f"rows per call {sorted(point['rows_per_call'].values())}"]
    sched: SchedSummary | None = point["sched"]
    if sched is None:
        lines.append("  (no perf: no scheduler trace)")
    else:
        seconds = sched.seconds
        lines.append(f"  router thread preempted {sched.preempted / seconds:.0f}/s, slept {sched.slept / seconds:.0f}/s; "
                     "what ran next, per second: " + ", ".join(
                         f"{r} {count / seconds:.0f}" for r, count in sched.next_after_preempted.most_common(4)))
        lines.append("  its wakeups per second, and the share on its own CPU: " + ", ".join(
            f"{r} {count / seconds:.0f} ({sched.wakeups_on_its_cpu[r] / count:.0%})"
            for r, count in sched.wakeups.most_common(4)))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=lambda s: [int(n) for n in s.split(",")], default=[2, 8])
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds of each measured point")
    parser.add_argument("--ghosts", action="store_true", help="instead: two members with and without ghosts")
    parser.add_argument("--rounds", type=int, default=3, help="--ghosts: rounds of the pair")
    args = parser.parse_args(argv)
    log_dir = Path(tempfile.mkdtemp(prefix="core-sharing-"))
    bodies = make_bodies()
    script = log_dir / "post.lua"
    script.write_text(lua_script(bodies))
    if args.ghosts:
        for point in ghost_rounds(args.rounds, args.seconds, script, bodies[0], log_dir):
            cpu = point["router_user_ms"] + point["router_system_ms"]
            print(f"ghosts {'on ' if point['ghosts'] else 'off'}: {point['rps']} req/s; router {cpu:.3f} CPU ms per "
                  f"answer at {point['router_cores']:.2f} core; ghosts {point['ghost_cores']:.2f} core", flush=True)
        return
    for n in args.members:
        print(describe(n, members_point(n, args.seconds, script, bodies[0], log_dir)), flush=True)


if __name__ == "__main__":
    main()
