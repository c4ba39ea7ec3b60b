"""The router's own CPU per request, without Ray: parse, fan out, combine, answer.

`python -m bench.hot_path [--requests N] [--connections C] [--members M]`: N requests of the
harness's body (`bench.wrk.make_bodies`), C at a time, through `ensemble.validation.parse_predict`,
`EnsemblePredictor.predict` over M instant members (default five; 2 ms of sleep, no CPU), the answers and
their JSON, in one event loop. Process CPU over requests is the router's per-request Python work
apart from Serve's HTTP path and the member calls' I/O; run it at two commits to compare them.
"""
from __future__ import annotations

import argparse
import asyncio
import time

import numpy as np
import orjson

from bench.wrk import make_bodies
from ensemble.config import MemberVersionSpec, RouterSpec, deployment_name
from ensemble.fanout import EnsemblePredictor
from ensemble.validation import Limits, parse_predict
from models.data import FEATURES, N_FEATURES, WINDOW

MEMBERS = 5  # as in graphs/ensemble.yaml
ROUTER = RouterSpec()  # the router's default limits, as the graphs use them
LIMITS = Limits(WINDOW, N_FEATURES, ROUTER.max_rows, ROUTER.max_instances, ROUTER.max_body_bytes, FEATURES)


async def instant_member(windows: np.ndarray) -> np.ndarray:
    await asyncio.sleep(0.002)
    return np.zeros(len(windows), dtype=np.float32)


async def cpu_ms_per_request(requests: int, connections: int, members: int = MEMBERS) -> float:
    models = [f"member{i}" for i in range(members)]
    predictor = EnsemblePredictor(
        calls={model: {"v1": instant_member} for model in models},
        traffic={model: {"split": {"v1": 1.0}, "shadow": {}} for model in models},
        weights=lambda: {deployment_name(model, "v1"): 1.0 for model in models},
        deadline_s=1.0, max_rows=MemberVersionSpec().max_batch_rows, max_in_flight=ROUTER.max_in_flight,
    )
    bodies = make_bodies()
    slots = asyncio.Semaphore(connections)

    async def answer(body: bytes) -> bytes:
        async with slots:
            parsed = parse_predict(body, LIMITS)
            result = await predictor.predict(parsed.windows, parsed.keys, parsed.request_ids, time.perf_counter())
            return orjson.dumps(result.answers(parsed.request_ids)[0])

    started = time.process_time()
    await asyncio.gather(*(answer(bodies[i % len(bodies)]) for i in range(requests)))
    return 1000 * (time.process_time() - started) / requests


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=4000, help="requests per round")
    parser.add_argument("--connections", type=int, default=64, help="requests in flight at once")
    parser.add_argument("--members", type=int, default=MEMBERS, help="member versions every request fans out to")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; the median is reported")
    args = parser.parse_args(argv)
    figures = [asyncio.run(cpu_ms_per_request(args.requests, args.connections, args.members)) for _ in range(args.rounds)]
    print(f"router hot path: median {np.median(figures):.3f} CPU ms per request "
          f"(rounds: {', '.join(f'{f:.3f}' for f in figures)}; {args.connections} in flight, {args.members} members)")


if __name__ == "__main__":
    main()
