"""RFC 7386 merge patches applied, as the API server applies them: to check the patches we
compute, and for fakes of one object on the server."""

from __future__ import annotations


def apply_merge_patch(target: object, patch: object) -> object:
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = apply_merge_patch(result.get(key), value)
    return result
