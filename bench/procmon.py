"""CPU seconds and peak RSS of a server's whole process tree, sampled while wrk runs.

CPU: per process, the last sampled user+system time minus the first (zero for a process born
during the run), summed; a process that dies between samples loses at most one interval.
RSS: the largest sum over the tree seen at any sample (RSS double-counts shared pages).
"""
from __future__ import annotations

import re
import threading
from collections import defaultdict
from dataclasses import dataclass, field

import psutil


def tree(root_pids: list[int]) -> list[psutil.Process]:
    procs: dict[int, psutil.Process] = {}
    for pid in root_pids:
        try:
            root = psutil.Process(pid)
        except psutil.NoSuchProcess:
            continue
        procs[pid] = root
        try:
            for child in root.children(recursive=True):
                procs[child.pid] = child
        except psutil.NoSuchProcess:
            pass
    return list(procs.values())


def label(proc: psutil.Process) -> str:
    """A readable name: Ray's process titles (ray::ServeReplica:app:Deployment), else the command."""
    try:
        cmd = proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return "?"
    if not cmd:
        return proc.name() if proc.is_running() else "?"
    head = cmd[0]
    if head.startswith("ray::"):  # the title gains ".<method>" while a replica runs one
        return re.sub(r"\.[A-Za-z_]+$", "", head.split()[0])
    exe = head.rsplit("/", 1)[-1]
    if exe.startswith("python") and len(cmd) > 1:
        mod = cmd[2] if cmd[1] == "-m" and len(cmd) > 2 else cmd[1].rsplit("/", 1)[-1]
        return f"python {mod}"
    return exe


@dataclass
class Usage:
    cpu_s: float
    peak_rss_mb: float
    cpu_by_process: dict[str, float] = field(default_factory=dict)
    processes: int = 0


class TreeMonitor:
    """Samples the process tree under `root_pids` every `interval_s` from a background thread."""

    def __init__(self, root_pids: list[int], interval_s: float = 0.25) -> None:
        self.root_pids = root_pids
        self.interval_s = interval_s
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._labels: dict[int, str] = {}
        self._peak_rss = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self, baseline: bool = False) -> None:
        rss = 0
        for proc in tree(self.root_pids):
            try:
                with proc.oneshot():
                    t = proc.cpu_times()
                    cpu = t.user + t.system
                    rss += proc.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            if proc.pid not in self._labels:
                self._labels[proc.pid] = label(proc)
            if baseline:
                self._first[proc.pid] = cpu
            else:
                self._first.setdefault(proc.pid, 0.0)
            self._last[proc.pid] = cpu
        self._peak_rss = max(self._peak_rss, rss)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> TreeMonitor:
        self._sample(baseline=True)
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        self._sample()

    def usage(self) -> Usage:
        by_label: dict[str, float] = defaultdict(float)
        for pid, last in self._last.items():
            by_label[self._labels.get(pid, "?")] += max(0.0, last - self._first.get(pid, 0.0))
        return Usage(
            cpu_s=sum(by_label.values()),
            peak_rss_mb=self._peak_rss / 2**20,
            cpu_by_process=dict(sorted(by_label.items(), key=lambda kv: -kv[1])),
            processes=len(self._last),
        )
