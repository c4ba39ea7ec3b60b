"""(4) One FastAPI/uvicorn process holding the same five models in-process, averaged.

`python -m bench.apps.inproc --port N [--model-root DIR]`: one uvicorn worker, each model
loaded with the project's `models.repository.load_runtime` (SHA-256 checked, warmed up), one
framework thread each (as the ensemble's replicas have). Every request runs the five models
one after the other on its window, on the event loop: no batching, no thread hops.
(No postponed annotations: FastAPI must see the real `Request` type on the route.)
"""
import argparse
from pathlib import Path

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response

from bench.apps import MEMBERS

REPO = Path(__file__).resolve().parents[2]


def create_app(model_root: str | Path, threads: int = 1) -> FastAPI:
    """The app, with every model loaded (and so warmed up) before it serves."""
    from models.repository import load_runtime

    runtimes = {f"{m}-{v}": load_runtime(model_root, m, v, num_threads=threads) for m, v in MEMBERS}
    app = FastAPI()

    @app.post("/v1/predict")
    async def predict(request: Request) -> Response:
        body = orjson.loads(await request.body())
        windows = np.asarray(body["window"], dtype=np.float32)[None, -128:]
        members = {name: float(runtime.predict(windows)[0]) for name, runtime in runtimes.items()}
        answer = {"request_id": body.get("request_id", ""), "prediction": sum(members.values()) / len(members),
                  "members": members}
        return Response(orjson.dumps(answer), media_type="application/json")

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    return app


def main(argv: list[str] | None = None) -> None:
    """Serve on loopback; the harness sets one OpenMP/BLAS thread in the environment before start."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model-root", default=str(REPO / "model_repo"))
    opts = parser.parse_args(argv)
    import uvicorn

    uvicorn.run(create_app(opts.model_root), host="127.0.0.1", port=opts.port, workers=1,
                log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
