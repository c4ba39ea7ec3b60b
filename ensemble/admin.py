"""Who may change traffic: a bearer token from the environment, compared in constant time.

`ENSEMBLE_ADMIN_TOKEN` holds the token, or `ENSEMBLE_ADMIN_TOKEN_FILE` names a file holding
it (a mounted secret). With neither, the admin API is disabled rather than open.
"""
from __future__ import annotations

import hmac
from collections.abc import Mapping
from pathlib import Path

TOKEN_ENV = "ENSEMBLE_ADMIN_TOKEN"
TOKEN_FILE_ENV = "ENSEMBLE_ADMIN_TOKEN_FILE"


def admin_token(environ: Mapping[str, str]) -> str | None:
    """The configured token, or None when the admin API is disabled; an unreadable file is an error."""
    token = environ.get(TOKEN_ENV, "").strip()
    if not token and environ.get(TOKEN_FILE_ENV):
        token = Path(environ[TOKEN_FILE_ENV]).read_text().strip()
    return token or None


def authorise(authorization: str | None, token: str | None) -> tuple[int, str] | None:
    """None when `authorization` carries the token; else the HTTP status and message to answer."""
    if token is None:
        return 403, f"admin API disabled: set {TOKEN_ENV} or {TOKEN_FILE_ENV}"
    scheme, _, presented = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(), token.encode()):
        return 401, "a valid bearer token is required (Authorization: Bearer <token>)"
    return None
