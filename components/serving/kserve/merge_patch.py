"""JSON merge patches (RFC 7386): apply one, and compute the smallest one between two documents."""

from __future__ import annotations

import copy


def merge_patch(target: object, patch: object) -> object:
    """Return ``target`` with an RFC 7386 JSON merge patch applied (null removes a key)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def merge_diff(old: dict, new: dict) -> dict:
    """Return the merge patch that turns ``old`` into ``new``: changed keys, null for removed ones, lists whole."""
    patch: dict = {key: None for key in old if key not in new}
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(old.get(key), dict):
            nested = merge_diff(old[key], value)
            if nested:
                patch[key] = nested
        elif old.get(key) != value or key not in old:
            patch[key] = copy.deepcopy(value)
    return patch
