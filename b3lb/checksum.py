"""BBB API checksums: verifying what frontends send, signing what we send to nodes.

The checksum covers `callName + rawQueryWithoutChecksum + secret`. We hash the query string
exactly as it arrived: re-encoding it would break clients that encode differently from us.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable

# Hex length of each digest, which is how BBB picks the algorithm.
ALGORITHM_BY_LENGTH = {40: "sha1", 64: "sha256", 96: "sha384", 128: "sha512"}
HASHERS = {
    "sha1": hashlib.sha1,
    "sha256": hashlib.sha256,
    "sha384": hashlib.sha384,
    "sha512": hashlib.sha512,
}


def find_checksum(query: str) -> str | None:
    """The raw value of the first `checksum` parameter, or None."""
    for pair in query.split("&"):
        if pair.startswith("checksum="):
            return pair[9:]
    return None


def strip_checksum(query: str, value: str) -> str:
    """Remove the checksum pair by BBB's three string replacements, in BBB's order."""
    pair = "checksum=" + value
    at = len(query) - len(pair)
    if at > 0 and query[at - 1] == "&" and query.find(pair) == at:
        # The usual query: its only checksum pair is the last one, which is all the replacements remove.
        return query[: at - 1]
    return (
        query.replace("&checksum=" + value, "")
        .replace("checksum=" + value + "&", "")
        .replace("checksum=" + value, "")
    )


def wire_bytes(text: str) -> bytes:
    """The bytes a client sent: Tornado hands us the request line decoded as latin-1."""
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return text.encode("utf-8")


def digest(algorithm: str, call: str, query: str, secret: str) -> str:
    return HASHERS[algorithm](wire_bytes(call + query + secret)).hexdigest()


def verify(
    call: str,
    query: str,
    secrets: Iterable[str],
    allowed: frozenset[str],
    checksum_hash: str | None = None,
) -> bool:
    """True when the query's checksum matches one of the (non-empty) secrets.

    `checksum_hash` is the value of the B3LB `checksumHash` parameter; a known value picks the
    algorithm, anything else falls back to the length rule. Disallowed algorithms never match.
    """
    raw = find_checksum(query)
    if not raw:
        return False
    return verify_payload(call, strip_checksum(query, raw), raw, secrets, allowed, checksum_hash)


def verify_payload(
    call: str,
    payload: str,
    raw: str,
    secrets: Iterable[str],
    allowed: frozenset[str],
    checksum_hash: str | None = None,
) -> bool:
    """`verify` for a query already split into the hashed payload and the raw checksum value."""
    if not raw or not raw.isascii():  # compare_digest refuses non-ASCII str (it would raise)
        return False
    supplied = raw.lower()
    algorithm = checksum_hash.lower() if checksum_hash else ""
    if algorithm not in HASHERS:
        algorithm = ALGORITHM_BY_LENGTH.get(len(supplied), "")
    if algorithm not in allowed:
        return False
    matched = False
    for secret in secrets:
        if not secret:  # an empty rollover secret must never authenticate
            continue
        # No early exit: the time taken does not tell which secret matched.
        matched |= hmac.compare_digest(digest(algorithm, call, payload, secret), supplied)
    return matched


# What quote_plus(safe="*") leaves as it is: most keys and values, which then skip quoting.
_PLAIN_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.~*-"
_PLAIN = re.compile(r"[A-Za-z0-9_.~*-]*")
# Byte (as the latin-1 character of the same code) -> itself when plain, else its escape (space: "+").
# A list, not a dict: str.translate pays an exception for each character a dict does not map.
_ESCAPES = [chr(code) if chr(code) in _PLAIN_CHARS else "+" if code == 0x20 else f"%{code:02X}" for code in range(256)]


def quote_value(text: str) -> str:
    """quote_plus(text, safe="*"), by one str.translate over the UTF-8 bytes (urllib escapes byte
    by byte in Python: 5 µs for a callback URL, 2 µs here). Lone surrogates raise UnicodeEncodeError as there."""
    if (text.isalnum() and text.isascii()) or _PLAIN.fullmatch(text):  # the first test is the cheaper
        return text
    if not text.isascii():
        text = text.encode("utf-8").decode("latin-1")
    return text.translate(_ESCAPES)


def encode_params(params: Iterable[tuple[str, str]]) -> str:
    """Form-encode parameters the way Java and Ruby BBB clients do (space as +, * literal): what
    urlencode(params, safe="*", quote_via=quote_plus) makes."""
    return "&".join(f"{quote_value(k)}={quote_value(v)}" for k, v in params)


def signed_query(call: str, params: Iterable[tuple[str, str]], secret: str, algorithm: str) -> str:
    """`query&checksum=...` for a node, signed with that node's secret and its cluster's algorithm."""
    query = encode_params(params)
    checksum = digest(algorithm.lower(), call, query, secret)
    return f"{query}&checksum={checksum}" if query else f"checksum={checksum}"
