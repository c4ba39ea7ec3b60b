"""(1) The ceiling of the Ray Serve path: read the body, answer a constant JSON."""
from ray import serve
from starlette.requests import Request
from starlette.responses import Response

ANSWER = b'{"request_id":"noop","prediction":0.0,"members":{},"degraded":false,"missing":[]}'


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=256)
class NoOp:
    async def __call__(self, request: Request) -> Response:
        await request.body()
        return Response(ANSWER, media_type="application/json")


def build_app():
    return NoOp.bind()
