"""Documenting bodies that routes parse themselves.

The hot routes read raw bytes (see `ensemble.validation`), so FastAPI cannot infer their
request schema; `json_body` puts the pydantic schema into /openapi.json anyway. Nested
models are inlined because Serve rebuilds the FastAPI app, so extra components would be lost.
"""
from typing import Any

from pydantic import BaseModel


def _inline(node: Any, definitions: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        if "$ref" in node:
            return _inline(definitions[node["$ref"].rsplit("/", 1)[-1]], definitions)
        return {key: _inline(value, definitions) for key, value in node.items()}
    if isinstance(node, list):
        return [_inline(value, definitions) for value in node]
    return node


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` for a route whose JSON body follows `model`."""
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": _inline(schema, definitions)}}}}
