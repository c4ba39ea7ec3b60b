"""A member version reached over HTTP through Serve's ingress (`router.member_url`).

Serve's HAProxy ingress forwards to the member application's replicas, so routing, load
balancing and health stay Serve's; what changes is the cost of a call: raw float32 bytes over
a keep-alive connection instead of a pickled handle call over gRPC (bench/call_cost.py).
"""
from __future__ import annotations

from typing import Any

import aiohttp
import numpy as np

from ensemble.wire import CONTENT_TYPE, decode_predictions, encode


class MemberHttpError(RuntimeError):
    """The member's route answered something other than 200."""


class HttpMember:
    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url

    async def predict(self, windows: np.ndarray) -> np.ndarray:
        async with self.session.post(self.url, data=encode(windows), headers={"content-type": CONTENT_TYPE}) as reply:
            body = await reply.read()
            if reply.status != 200:
                raise MemberHttpError(f"{self.url}: HTTP {reply.status}: {body[:200].decode(errors='replace')}")
        return decode_predictions(body, len(windows))

    async def info(self) -> dict[str, Any]:
        async with self.session.get(self.url) as reply:
            if reply.status != 200:
                raise MemberHttpError(f"{self.url}: HTTP {reply.status}")
            return await reply.json()
