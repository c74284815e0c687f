"""The contract's key order, and putting a stored document back into it.

PostgreSQL's jsonb does not keep key order, so every document read back from
the database goes through `in_contract_order` before it is printed or
exported. The order is taken from the pydantic models in `models.py`.
"""

from __future__ import annotations

import types
import typing
from typing import Any, Union

import orjson
from pydantic import BaseModel

from worker.enrichment.models import EnrichedDocument

# An order node: the keys of an object, each with the node of its value.
# `None` means "leave this value as it is" (scalars, free-form objects).
OrderNode = dict[str, Any] | None


def _node_for(annotation: Any) -> OrderNode:
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(annotation):
            node = _node_for(arg)
            if node is not None:
                return node
        return None
    if origin is list:
        (item,) = typing.get_args(annotation)
        return _node_for(item)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return {name: _node_for(f.annotation) for name, f in annotation.model_fields.items()}
    return None


KEY_ORDER: dict[str, Any] = _node_for(EnrichedDocument) or {}


def _reorder(value: Any, node: OrderNode) -> Any:
    if node is None:
        return value
    if isinstance(value, list):
        return [_reorder(item, node) for item in value]
    if not isinstance(value, dict):
        return value
    out = {key: _reorder(value[key], sub) for key, sub in node.items() if key in value}
    # Keys outside the contract (should not exist) are kept, after the known ones.
    for key, item in value.items():
        if key not in out:
            out[key] = item
    return out


def in_contract_order(document: Any) -> Any:
    """The enriched document with keys in the contract's order at every level."""
    return _reorder(document, KEY_ORDER)


def pair_in_contract_order(pair: Any) -> Any:
    return _reorder(pair, KEY_ORDER["training_pairs"])


def dumps(value: Any) -> bytes:
    """Printed and exported JSON: UTF-8, non-ASCII as is, key order as given."""
    return orjson.dumps(value)
