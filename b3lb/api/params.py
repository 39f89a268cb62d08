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


def decode_key(text: str) -> str:
    return unquote_plus(text, errors="replace") if "%" in text or "+" in text else text


def decode_value(text: str) -> str:
    """`+` and %-escapes as UTF-8 with replacement; control characters dropped, as BBB does."""
    if "%" in text or "+" in text:
        text = unquote_plus(text, errors="replace")
    return text.translate(_CONTROL) if not text.isprintable() else text


def parse_query(query: str) -> Params:
    """Split on `&` only (`;` is data) and decode every pair."""
    return QueryText(query).params()


class QueryText:
    """A query split once; lookups decode only the pairs they touch, `params()` all of them."""

    __slots__ = ("pairs", "_params")

    def __init__(self, text: str) -> None:
        self.pairs = [pair.partition("=") for pair in text.split("&") if pair]
        self._params: Params | None = None

    def raw(self, key: str) -> str | None:
        """The undecoded value of the first plain `key` (for the hex checksum)."""
        for k, _, v in self.pairs:
            if k == key:
                return v
        return None

    def get(self, key: str) -> str | None:
        for k, _, v in self.pairs:
            if k == key or (("%" in k or "+" in k) and decode_key(k) == key):
                return decode_value(v)
        return None

    def params(self) -> Params:
        """Every parameter but the checksum, decoded, in order (cached)."""
        if self._params is None:
            self._params = [
                (key, decode_value(v)) for k, _, v in self.pairs if (key := decode_key(k)) != "checksum"
            ]
        return self._params


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
