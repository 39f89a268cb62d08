"""Query parameters as an ordered list, and the edits b3lb makes to them.

Parameters keep their order and duplicates; the first value of a key wins for our own
decisions (as BBB does). Rewritten keys keep their position, added keys are appended.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import unquote_plus

from b3lb.tenancy import Rule

Params = list[tuple[str, str]]

_CONTROL = {i: None for i in range(0x20)}


def parse_query(query: str) -> Params:
    """Split on `&` only (`;` is data), decode `+` and %-escapes as UTF-8 with replacement.

    Control characters are dropped from values, as BBB does.
    """
    params: Params = []
    for pair in query.split("&"):
        if not pair:
            continue
        key, _, value = pair.partition("=")
        params.append(
            (
                unquote_plus(key, errors="replace"),
                unquote_plus(value, errors="replace").translate(_CONTROL),
            )
        )
    return params


def first(params: Params, key: str) -> str | None:
    for k, v in params:
        if k == key:
            return v
    return None


def first_casefold(params: Params, key: str) -> tuple[str, str] | None:
    lowered = key.lower()
    for k, v in params:
        if k.lower() == lowered:
            return k, v
    return None


def remove(params: Params, *keys: str) -> Params:
    drop = set(keys)
    return [(k, v) for k, v in params if k not in drop]


def set_value(params: Params, key: str, value: str, *, casefold: bool = False) -> Params:
    """Replace the first occurrence in place (dropping further ones), or append."""
    match = key.lower() if casefold else key
    out: Params = []
    done = False
    for k, v in params:
        if (k.lower() if casefold else k) == match:
            if not done:
                out.append((k, value))
                done = True
            continue
        out.append((k, v))
    if not done:
        out.append((key, value))
    return out


def set_default(params: Params, key: str, value: str) -> Params:
    if first(params, key) is not None:
        return params
    return [*params, (key, value)]


def apply_rules(params: Params, rules: Iterable[Rule]) -> Params:
    """Tenant/secret rules: BLOCK removes, SET adds when absent, OVERRIDE replaces or adds."""
    for rule in rules:
        if rule.mode == "BLOCK":
            params = remove(params, rule.name)
        elif rule.mode == "SET":
            params = set_default(params, rule.name, rule.value)
        elif rule.mode == "OVERRIDE":
            params = set_value(params, rule.name, rule.value)
    return params
