"""From measured points to ratios, target verdicts and Markdown tables. Pure: no Ray, no wrk.

A result file (bench/results/*.json) holds `runs`: one per server and ingress setting, each
with one point per connection count. The main comparison takes, per system, the run under the
ingress setting that gave the ensemble its best throughput at the highest connection count
(the winner); reference (1) is the best no-op at each connection count, whatever its setting.
"""
from __future__ import annotations

import re
from typing import Any

SYSTEMS = {
    "noop": "(1) no-op Ray Serve",
    "naive": "(2) naive Ray Serve fan-out",
    "ensemble": "(3) this ensemble",
    "fastapi": "(4) FastAPI, 5 models in-process",
    "bentoml": "(5) BentoML, 5 member services",
}
# Figure, Markdown header, format.
METRICS = (("rps", "req/s", "{:.0f}"), ("p50_ms", "p50 ms", "{:.2f}"), ("p99_ms", "p99 ms", "{:.2f}"),
           ("cpu_s", "CPU s", "{:.1f}"), ("cpu_ms_per_req", "CPU ms/req", "{:.2f}"),
           ("peak_rss_mb", "peak RSS MiB", "{:.0f}"))
Point = dict[str, Any]
Run = dict[str, Any]


def summarize(wrk: dict[str, Any], cpu_s: float, peak_rss_mb: float, connections: int) -> Point:
    """One measured point: wrk's figures and the server tree's CPU and memory, flat."""
    lat = wrk["latency_ms"]
    return {
        "connections": connections,
        "requests": wrk["requests"],
        "duration_s": wrk["duration_s"],
        "rps": wrk["rps"],
        "p50_ms": lat["p50"],
        "p99_ms": lat["p99"],
        "max_ms": lat.get("max"),
        "cpu_s": cpu_s,
        "cpu_ms_per_req": 1000 * cpu_s / answered if (answered := wrk["requests"] - wrk["non2xx"]) else None,
        "peak_rss_mb": peak_rss_mb,
        "non2xx": wrk["non2xx"],
        "statuses": wrk.get("statuses", {}),
        "socket_errors": wrk["socket_errors"],
        "marked": wrk.get("marked", 0),
        "cdf_ms": wrk.get("cdf_ms", []),
    }


def point(run: Run | None, connections: int) -> Point | None:
    if run is None:
        return None
    return next((p for p in run["points"] if p["connections"] == connections), None)


def runs_of(runs: list[Run], system: str) -> list[Run]:
    return [r for r in runs if r["system"] == system]


def connection_counts(runs: list[Run]) -> list[int]:
    return sorted({p["connections"] for r in runs for p in r["points"]})


def best_run(runs: list[Run], system: str, connections: int) -> Run | None:
    """The run of `system` with the highest throughput at `connections`."""
    measured = [r for r in runs_of(runs, system) if point(r, connections)]
    return max(measured, key=lambda r: point(r, connections)["rps"], default=None)


def winner(runs: list[Run]) -> str | None:
    """The ingress setting under which the ensemble is fastest at the highest connection count."""
    counts = connection_counts(runs)
    best = best_run(runs, "ensemble", counts[-1]) if counts else None
    return best["settings"] if best else None


RAY_SYSTEMS = ("noop", "naive", "ensemble")  # run under each ingress setting


def run_for(runs: list[Run], system: str, settings: str | None) -> Run | None:
    """A Ray system's run under `settings` (None where that part failed: never another setting's),
    else the system's only run."""
    found = runs_of(runs, system)
    if system in RAY_SYSTEMS:
        return next((r for r in found if r["settings"] == settings), None)
    return found[0] if len(found) == 1 else None


def main_rows(runs: list[Run]) -> list[tuple[str, Run, Point]]:
    """(system, run, point) of the main comparison, per connection count: (1) best no-op, the rest at the winner."""
    win = winner(runs)
    rows = []
    for connections in connection_counts(runs):
        for system in SYSTEMS:
            run = best_run(runs, system, connections) if system == "noop" else run_for(runs, system, win)
            if (found := point(run, connections)) is not None:
                rows.append((system, run, found))
    return rows


def ratio(value: float | None, reference: float | None) -> float | None:
    if value is None or not reference:
        return None
    return value / reference


def ratios(runs: list[Run]) -> list[dict[str, Any]]:
    """Every figure of the main comparison as a ratio to (1) and to (4) at the same connection count."""
    rows = main_rows(runs)
    reference = {(system, p["connections"]): p for system, _, p in rows if system in ("noop", "fastapi")}
    out = []
    for system, _, p in rows:
        for ref in ("noop", "fastapi"):
            base = reference.get((ref, p["connections"]))
            if base is not None:
                out.append({"system": system, "connections": p["connections"], "vs": ref,
                            **{m: ratio(p[m], base[m]) for m, _, _ in METRICS}})
    return out


def target(name: str, value: float | None, bound: float, higher_is_better: bool = True, unit: str = "") -> dict:
    met = None if value is None else (value >= bound if higher_is_better else value <= bound)
    return {"target": name, "value": value, "bound": bound, "op": ">=" if higher_is_better else "<=",
            "unit": unit, "met": met}


def _comparison_targets(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The targets judged on the main comparison's points (none without its points)."""
    counts = connection_counts(runs)
    if not counts:
        return []
    high, low, win = counts[-1], counts[0], winner(runs)
    ens = point(run_for(runs, "ensemble", win), high)
    rps = ens["rps"] if ens else None
    out = [
        target(f"ensemble / FastAPI (4) throughput at {high} connections",
               ratio(rps, (point(run_for(runs, "fastapi", None), high) or {}).get("rps")), 1.5, unit="x"),
        target(f"ensemble / naive fan-out (2) throughput at {high} connections",
               ratio(rps, (point(run_for(runs, "naive", win), high) or {}).get("rps")), 5.0, unit="x"),
        target(f"ensemble / best no-op (1) throughput at {high} connections",
               ratio(rps, (point(best_run(runs, "noop", high), high) or {}).get("rps")), 0.5, unit="x"),
    ]
    ens_low, noop_low = point(run_for(runs, "ensemble", win), low), point(run_for(runs, "noop", win), low)
    if ens_low and noop_low:
        out.append(target(f"ensemble p50 - no-op p50 at {low} connection (same ingress)",
                          ens_low["p50_ms"] - noop_low["p50_ms"], 2.0, higher_is_better=False, unit="ms"))
    return out


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each as measured in this one run (a run of some parts only: theirs)."""
    out = _comparison_targets(results["runs"])
    members = results.get("members") or {}
    if "2" in members and "8" in members:
        out.append(target("8 members / 2 members throughput", ratio(members["8"]["rps"], members["2"]["rps"]), 0.85,
                          unit="x"))
    check = results.get("member_check") or {}
    for name, paired in check.get("paired", {}).items():
        out.append(target(f"{name}: Serve ({paired['path']}) / in-process rows/s (batch {check['batch']}, "
                          f"median of {len(check['beside'][name]['rounds'])} paired rounds)", paired["ratio"], 0.7,
                          unit="x"))
    if (gpu := results.get("gpu")) is not None:
        out.append(target("nets given a GPU share that run on CUDA (share of them)", nets_on_cuda(gpu), 1.0, unit="x"))
    for p in (results.get("deadline") or {}).get("points", []):
        out.append(target(f"deadline p99 at {p['connections']} connections (stall 200 ms, deadline 25 ms)",
                          p["p99_ms"], 30.0, higher_is_better=False, unit="ms"))
        out.append(target(f"deadline: requests not answered with 200 at {p['connections']} connections",
                          p["non2xx"] + p["socket_errors"], 0, higher_is_better=False))
    return out


def nets_on_cuda(gpu: dict[str, Any]) -> float | None:
    """Of the member versions the GPU run served in torch (the nets: asked for CUDA, torch serves
    them), the share that really ran on CUDA; None when not measured, 0 when no net was in torch."""
    if "runtimes" not in gpu:
        return None
    nets = [r["device"] for r in gpu["runtimes"].values() if r["runtime"] == "torch"]
    return sum(device == "cuda" for device in nets) / len(nets) if nets else 0.0


def _error_line(error: str) -> str:
    """What went wrong, in one line: HAProxy's first alert (without its config path), else the first line."""
    lines = error.splitlines()
    alert = next((line for line in lines if "[ALERT]" in line), None)
    line = alert.split(" : ", 1)[-1] if alert else lines[0] if lines else ""
    return re.sub(r"\[/[^\]]*\]", "[...]", line)[:200]


def _fmt(value: float | None, spec: str = "{:.2f}") -> str:
    return "—" if value is None else spec.format(value)


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def point_cells(p: Point) -> list[str]:
    return [_fmt(p[m], spec) for m, _, spec in METRICS] + [str(p["requests"]), str(p["non2xx"] + p["socket_errors"]),
                                                           _fmt(p.get("other_cpu_s"), "{:.1f}")]


# req/s and CPU ms/req count answers with a 2xx status; the latencies, every answer ("answers", of
# which "errors" failed): a p99 rests on its answers' slowest hundredth.
POINT_HEADER = [h for _, h, _ in METRICS] + ["answers", "errors", "others' CPU s"]
VERDICT = {True: "yes", False: "**no**", None: "not measured"}


def markdown(results: dict[str, Any]) -> str:
    """All tables of one result file, for BENCHMARKS.md."""
    runs = results["runs"]
    parts = [f"Ingress setting under which the ensemble is fastest (used for (2) and (3) below): "
             f"**{winner(runs)}**.", "", "### Main comparison", "",
             table(["conns", "system", "ingress", *POINT_HEADER],
                   [[str(p["connections"]), SYSTEMS[s], r["settings"], *point_cells(p)] for s, r, p in main_rows(runs)])]
    parts += ["", "### Ratios (each figure divided by the same figure of (1) best no-op, and of (4) FastAPI)", "",
              table(["conns", "system", "vs", *[h for _, h, _ in METRICS]],
                    [[str(r["connections"]), SYSTEMS[r["system"]], r["vs"],
                      *[_fmt(r[m], "{:.2f}x") for m, _, _ in METRICS]] for r in ratios(runs)])]
    ray_runs = [r for r in runs if r["system"] in RAY_SYSTEMS]
    parts += ["", "### Ray Serve ingress settings side by side", "",
              table(["system", "ingress", "conns", *POINT_HEADER],
                    [[SYSTEMS[r["system"]], r["settings"], str(p["connections"]), *point_cells(p)]
                     for r in ray_runs for p in r["points"]])]
    if deadline := results.get("deadline"):
        parts += ["", "### Deadline (one member stalled 200 ms, router deadline 25 ms)", "",
                  table(["conns", *POINT_HEADER, "degraded answers", "answers by status"],
                        [[str(p["connections"]), *point_cells(p), str(p["marked"]),
                          ", ".join(f"{code}: {n}" for code, n in sorted(p["statuses"].items()))]
                         for p in deadline["points"]])]
    if members := results.get("members"):
        parts += ["", "### Members: 2 vs 8", "",
                  table(["members", "conns", *POINT_HEADER],
                        [[n, str(p["connections"]), *point_cells(p)] for n, p in sorted(members.items())])]
    if gpu := results.get("gpu"):
        parts += ["", "### GPU: the ensemble with a GPU share for each net", ""]
        if "skipped" in gpu:
            parts += [f"Not measured: {gpu['skipped']}."]
        else:
            fake = f", {gpu['fake_gpus']} GPUs declared to Ray without any" if gpu["fake_gpus"] else ""
            runtimes = gpu.get("runtimes", {})
            parts += [f"Each net replica asks for {gpu['gpu_share']} GPU{fake}; machine's GPUs: "
                      f"{results['machine']['gpu']}. Where each member version ran: "
                      + (", ".join(f"{name} {r['runtime']} on {r['device']}" for name, r in runtimes.items())
                         or gpu.get("runtimes_error", "not read")) + ".", "",
                      table(["conns", *POINT_HEADER], [[str(p["connections"]), *point_cells(p)] for p in gpu["points"]])]
    if check := results.get("member_check"):
        paths = list(check["serve"])
        rows = [[name, _fmt(local["rows_per_s"], "{:.0f}"), _fmt(check["beside"][name]["rows_per_s"], "{:.0f}"),
                 *(_fmt(check["serve"][path].get(name, {}).get("rows_per_s"), "{:.0f}") for path in paths),
                 ", ".join(f"{path} {_fmt(value, '{:.2f}x')}" for path, value in paired["by_path"].items())]
                for name, local in check["in_process"].items() if (paired := check["paired"].get(name))]
        parts += ["", f"### Member deployments: batched throughput in Serve vs in-process (batch {check['batch']})", "",
                  table(["member", "in-process rows/s, before Ray", "in-process rows/s, beside Serve",
                         *(f"in Serve, {path}, rows/s" for path in paths), "paired ratio, median of rounds"], rows)]
    for key, heading in (("retried", "Parts of this run retried once (their server failed)"),
                         ("failures", "Failed parts of this run")):
        if entries := results.get(key):
            parts += ["", f"### {heading}", "",
                      table(["part", "error"], [[k, _error_line(v)] for k, v in entries.items()])]
    verdicts = targets(results)
    parts += ["", "### Targets", "",
              table(["target", "measured", "bound", "met"],
                    [[t["target"], _fmt(t["value"]) + t["unit"], f"{t['op']} {t['bound']}{t['unit']}",
                      VERDICT[t["met"]]] for t in verdicts])]
    return "\n".join(parts) + "\n"
