"""Starting, probing and stopping each server under test, each in its own process group.

A server is a subprocess started with `start_new_session=True`. Stopping it asks the leader to
shut down (SIGTERM: Serve and Ray shut down cleanly, uvicorn and BentoML drain), waits, then
SIGKILLs the group and every process of its tree ever seen (by pid, checked against its start
time, since Ray's workers may leave the group), so nothing the harness started outlives it.
"""
from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from bench.procmon import tree

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable

# The Ray Serve ingress settings compared (environment of the whole Ray session).
SETTINGS: dict[str, dict[str, str]] = {
    "default": {},
    "throughput": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"},
    "haproxy": {"RAY_SERVE_ENABLE_HA_PROXY": "1"},
    "throughput+haproxy": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_HA_PROXY": "1"},
}
# The rest of `make serve`'s settings (Makefile SERVE_ENV), under every ingress setting: Serve's
# controller reconciling every 0.5 s instead of 0.1 s, no per-request metrics line from HAProxy to
# Serve's HAProxy manager (BENCHMARKS.md, "What changed"), stopping ingress replicas draining
# for 2 s instead of 30, predict requests not watched for a disconnect (deployments/http_callback.py),
# and a client that stops sending mid-request dropped by HAProxy after 60 s of silence, not 3600.
TUNING_ENV = {"RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5", "RAY_SERVE_HAPROXY_METRICS_ENABLED": "0",
              "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2", "RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S": "60",
              "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "deployments.http_callback:middlewares"}
THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}

Probe = Callable[[str], bool]


RAY_WORKER_PORTS_END = 20000  # Ray's workers bind ports 10002-19999 (its default range)


def free_port() -> int:
    """A TCP port free now on every interface, for a server that binds it seconds later.

    Taken below the kernel's ephemeral range where there is room: a port from that range can be
    handed meanwhile to any socket bound to port 0 or connecting out (Ray starts many), and
    HAProxy then failed to start with "Address already in use" for the port it was given."""
    ephemeral_from = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = range(RAY_WORKER_PORTS_END, ephemeral_from)
    for port in [*random.sample(ports, min(len(ports), 64)), 0]:
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise OSError("no free TCP port")


def predict_probe(body: bytes, allow_degraded: bool = False) -> Probe:
    """Ready when POST /v1/predict answers 200 (and, unless allowed, not degraded: every member up)."""
    def probe(url: str) -> bool:
        request = urllib.request.Request(f"{url}/v1/predict", data=body, headers={"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status == 200 and (allow_degraded or b'"degraded":true' not in response.read())
    return probe


def member_runtimes(url: str) -> dict[str, dict[str, str]]:
    """Each member version's runtime and the device it really runs on, from the router's
    `/v1/members` (one replica's view per version)."""
    with urllib.request.urlopen(f"{url}/v1/members", timeout=10) as response:
        members = json.loads(response.read())
    return {info["deployment"]: {"runtime": info["runtime"], "device": info["device"]}
            for spec in members.values() for info in spec["versions"].values() if "device" in info}


def marked(marker: str) -> list[psutil.Process]:
    """Live processes whose command line contains `marker`."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if marker in " ".join(proc.info["cmdline"] or ()):
            found.append(proc)
    return found


class ServerFailed(RuntimeError):
    pass


class Server:
    """One server process group under test, reachable at http://127.0.0.1:<port>."""

    def __init__(self, name: str, command: list[str], port: int, settings: str, log_dir: Path,
                 env: dict[str, str] | None = None, ready_file: Path | None = None, cwd: Path = REPO,
                 marker: str | None = None) -> None:
        self.name = name
        self.command = command
        self.port = port
        self.settings = settings
        self.env = env or {}
        self.ready_file = ready_file
        self.cwd = cwd
        # A string only this server's processes have in their command line (Ray's private temp dir):
        # workers that Ray spawns late, or whose raylet died first, are found by it at stop.
        self.marker = marker
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        self.info: dict[str, Any] = {}
        self.started_s = 0.0
        self.background_cores = 0.0  # the machine's busy cores just before start (other work)
        self.known: dict[int, float] = {}  # pid -> start time, of every process of its tree seen

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # Never join a Ray instance of the caller's (RAY_ADDRESS): every server starts its own.
        env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "PYTHONPATH": str(self.cwd), **self.env}
        self._t0 = time.monotonic()
        with self.log_path.open("w") as log:
            self.proc = subprocess.Popen(self.command, cwd=self.cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def wait_ready(self, probe: Probe, timeout_s: float) -> None:
        """Wait for the ready file (if any), then until `probe(url)` is true."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise ServerFailed(f"{self.name} exited ({self.proc.returncode}):\n{self.log_tail()}")
            if self.ready_file is None or self.ready_file.exists():
                if self.ready_file is not None and not self.info:
                    self.info = json.loads(self.ready_file.read_text())
                try:
                    if probe(self.url):
                        self.started_s = time.monotonic() - self._t0
                        self.remember()
                        return
                except Exception:  # noqa: BLE001 - not up yet
                    pass
            time.sleep(0.5)
        raise ServerFailed(f"{self.name} not ready after {timeout_s:.0f}s:\n{self.log_tail()}")

    def pids(self) -> list[int]:
        return [self.proc.pid] if self.proc else []

    def remember(self) -> None:
        """Note every process of the tree now, to be sure to reap them at stop."""
        for p in tree(self.pids()):
            try:
                self.known[p.pid] = p.create_time()
            except psutil.NoSuchProcess:
                pass

    def stop(self, grace_s: float = 20.0) -> None:
        if self.proc is None:
            return
        if self.alive():
            self.remember()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        if self.marker:
            self.known.update({p.pid: p.create_time() for p in marked(self.marker)})
        killed = []
        for pid, created in self.known.items():
            try:
                p = psutil.Process(pid)
                if abs(p.create_time() - created) < 0.01:
                    p.kill()
                    killed.append(p)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(killed, timeout=10)  # gone (or reaped by init) before stop returns
        self.proc = None


def ray_temp_dir() -> str:
    """A fresh directory for one Ray instance's files; short, as Ray puts unix sockets under it."""
    return tempfile.mkdtemp(prefix="rb", dir="/tmp")


def ray_env(settings: str, temp_dir: str) -> dict[str, str]:
    """The environment of a Ray session under ingress `settings` and the rest of `make serve`'s,
    with HAProxy's files under `temp_dir` and its ports free, so that it runs beside other instances."""
    return {**SETTINGS[settings], **TUNING_ENV,
            "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": f"{temp_dir}/haproxy/haproxy.cfg",
            "RAY_SERVE_HAPROXY_SOCKET_PATH": f"{temp_dir}/haproxy/admin.sock",
            "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": f"{temp_dir}/haproxy/metrics.sock",
            "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": f"{temp_dir}/haproxy",
            "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": f"{temp_dir}/haproxy/server-state",
            "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
            "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
            "RAY_USAGE_STATS_ENABLED": "0"}


def ray_server(name: str, app: str, log_dir: Path, settings: str = "default", extra: list[str] | None = None) -> Server:
    """serve_runner with one app, in its own Ray instance whose sockets and HAProxy files are private."""
    port = free_port()
    ready = Path(tempfile.mkdtemp(prefix="bench-")) / "ready.json"
    temp_dir = ray_temp_dir()
    env = ray_env(settings, temp_dir)
    command = [PYTHON, "-m", "bench.serve_runner", "--app", app, "--port", str(port), "--ready-file", str(ready),
               "--temp-dir", temp_dir, *(extra or [])]
    return Server(name, command, port, settings, log_dir, env, ready, marker=temp_dir)


def inproc_server(log_dir: Path, name: str = "fastapi") -> Server:
    port = free_port()
    return Server(name, [PYTHON, "-m", "bench.apps.inproc", "--port", str(port)], port, "uvicorn, 1 worker",
                  log_dir, THREAD_ENV)


def bento_server(venv: Path, log_dir: Path, name: str = "bentoml") -> Server:
    """`bentoml serve` of bench/apps/bento_service.py from its own virtualenv, on loopback only."""
    port = free_port()
    home = Path(tempfile.mkdtemp(prefix="bentoml-home-"))
    command = [str(venv / "bin" / "bentoml"), "serve", "bench.apps.bento_service:Ensemble", "--host", "127.0.0.1",
               "--port", str(port), "--working-dir", str(REPO)]
    env = {"BENCH_REPO": str(REPO), "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True", **THREAD_ENV}
    version = subprocess.run([str(venv / "bin" / "python"), "-c", "import bentoml; print(bentoml.__version__)"],
                             capture_output=True, text=True).stdout.strip()
    return Server(name, command, port, f"bentoml {version}, 5 member services (adaptive batching) + 1 front, "
                  "1 worker each", log_dir, env)
