"""Bounds and formats of every value an operator can store: one rule per kind of value.

The CLI parses its options with these rules (`Rule.parse`, text in) and the admin operations check
their settings with them again (`Rule.check`, typed values in, as an admin HTTP API will pass them),
so nothing reaches the database unchecked. A bad value raises ValueError with a message that says
what is allowed; `check_fields` prefixes it with the field's option name.

The bounds are generous for any real fleet and keep the work per value small: the load formula is
evaluated for every node on every refresh, so e.g. the CPU series has at most 100 terms.
sql/0004_bounds.sql enforces the numeric bounds in the database as well.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import re
import socket
import unicodedata
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar
from urllib.parse import unquote

MAX_FACTOR = 1_000_000.0  # load per attendee / per meeting
MAX_CPU_ITERATIONS = 100  # terms of the CPU series; 0 leaves the CPU out of the load
MAX_CPU_MAXIMUM = 1_000_000  # load of a full CPU
MAX_LIMIT = 10_000_000  # attendee and meeting limits (0 = unlimited)
MAX_HOLD_DAYS = 36_500  # recording hold time; 0 = delete at the next housekeeping run
MAX_SUB_ID = 999  # secrets are TENANT-NNN
MAX_PIXELS = 8192  # recording profile widths and heights
MAX_ROW_ID = 2**31 - 1  # serial primary keys
MAX_TEXT = 200  # varchar(200) columns: names, slugs, domains, node secrets, paths
MAX_PARAMETER = 200  # parameter rule names and values (varchar(200))

Settings = TypeVar("Settings")


def _shown(value: Any) -> str:
    """A value for an error message, cut so a megabyte of input gives a one-line error."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _number(value: float) -> str:
    """1000000.0 -> '1000000', 0.5 -> '0.5' (no exponent in messages)."""
    return str(int(value)) if value == int(value) else repr(value)


def has_control(text: str) -> bool:
    """True for control and format characters (C0, C1, U+2028, bidi overrides, ...)."""
    return any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in text)


class Rule(Protocol):
    def parse(self, text: str) -> Any: ...

    def check(self, value: Any) -> Any: ...


@dataclass(frozen=True)
class Whole:
    """A whole number in [low, high]."""

    low: int
    high: int

    def _error(self, value: Any) -> ValueError:
        return ValueError(f"must be a whole number from {self.low} to {self.high}, got {_shown(value)}")

    def parse(self, text: str) -> int:
        digits = text.strip()
        # ASCII digits only (int() also takes '1_000' and other scripts' digits), and few of them.
        if not re.fullmatch(r"[+-]?[0-9]{1,12}", digits):
            raise self._error(text)
        return self.check(int(digits))

    def check(self, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not self.low <= value <= self.high:
            raise self._error(value)
        return value


@dataclass(frozen=True)
class Number:
    """A finite number in [low, high]."""

    low: float
    high: float

    def _error(self, value: Any) -> ValueError:
        return ValueError(f"must be a number from {_number(self.low)} to {_number(self.high)}, got {_shown(value)}")

    def parse(self, text: str) -> float:
        try:
            return self.check(float(text) if len(text) <= 40 else None)
        except ValueError:
            raise self._error(text) from None

    def check(self, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self._error(value)
        if not math.isfinite(value) or not self.low <= value <= self.high:
            raise self._error(value)
        return float(value)


@dataclass(frozen=True)
class Text:
    """Text of min_length..max_length characters, no control characters, optionally a pattern."""

    max_length: int = MAX_TEXT
    min_length: int = 1
    spaces: bool = True  # inner spaces allowed (outer ones are stripped)
    pattern: str = ""
    hint: str = ""  # what the pattern means, for the message
    strip: bool = True

    def parse(self, text: str) -> str:
        return self.check(text)

    def check(self, value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError(f"must be text, got {_shown(value)}")
        text = value.strip() if self.strip else value
        if not self.min_length <= len(text) <= self.max_length:
            raise ValueError(f"must be {self.min_length} to {self.max_length} characters, got {_shown(value)}")
        if has_control(text) or (not self.spaces and any(c.isspace() for c in text)):
            spaces = "" if self.spaces else ", spaces"
            raise ValueError(f"must not contain control characters{spaces} or line breaks: {_shown(value)}")
        if self.pattern and not re.fullmatch(self.pattern, text):
            raise ValueError(f"invalid value {_shown(value)}: {self.hint}")
        return text


@dataclass(frozen=True)
class Choice:
    """One of a few words; `upper` says how input is normalised before the comparison."""

    choices: tuple[str, ...]
    upper: bool = True

    def parse(self, text: str) -> str:
        return self.check(text)

    def check(self, value: Any) -> str:
        if isinstance(value, str):
            word = value.strip().upper().replace("-", "") if self.upper else value.strip().lower()
            if word in self.choices:
                return word
        raise ValueError(f"choose one of {', '.join(self.choices)}, got {_shown(value)}")


_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")  # '_' for names like docker services


@dataclass(frozen=True)
class HostName:
    """A DNS name or an IP literal, nothing else: the node URL is built as scheme://HOST:port/."""

    max_length: int = MAX_TEXT

    def parse(self, text: str) -> str:
        return self.check(text)

    def check(self, value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError(f"must be a host name, got {_shown(value)}")
        problem = _host_problem(value, self.max_length)
        if problem:
            raise ValueError(f"invalid host name {_shown(value)}: {problem}")
        return _canonical_host(value)


def _ip_literal(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    inner = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        address = ipaddress.ip_address(inner)
    except ValueError:
        return None
    if inner is not text and address.version != 6:
        return None  # [1.2.3.4] is not a host
    return address


def _host_problem(text: str, max_length: int) -> str:
    """Why `text` is not a host name, or '' when it is one."""
    if not text:
        return "empty"
    if len(text) > max_length:
        return f"longer than {max_length} characters"
    if has_control(text) or any(c.isspace() for c in text):
        return "spaces and control characters are not allowed"
    if "://" in text:
        return "give the host only: the scheme is --protocol"
    if "@" in text:
        return "no user name or password"
    if any(c in text for c in "/?#\\"):
        return "no path, query or fragment: the API path is --bbb-endpoint"
    address = _ip_literal(text)
    if address is not None:
        if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
            return "scoped IPv6 addresses (%zone) are not supported"
        return ""
    if ":" in text or "[" in text or "]" in text:
        return "no port (use --port) and no brackets except around an IPv6 address"
    name = text[:-1] if text.endswith(".") else text
    if not name.isascii():
        return "use the ASCII (xn--) form of an international name"
    if len(name) > 253:
        return "longer than 253 characters"
    labels = name.lower().split(".")
    if not all(_LABEL.fullmatch(label) for label in labels):
        return "labels of 1 to 63 letters, digits, '-' or '_' separated by dots, not starting or ending with '-'"
    if labels[-1].isdigit() or _legacy_ipv4(name):
        return "not a valid IP address (write IPv4 as four decimal numbers, e.g. 192.0.2.10)"
    return ""


def _legacy_ipv4(name: str) -> bool:
    """Forms like 127.1 or 0x7f000001 that resolvers read as IPv4 addresses."""
    try:
        socket.inet_aton(name)
    except OSError:
        return False
    return True


def _canonical_host(text: str) -> str:
    address = _ip_literal(text)
    if address is None:
        return text.rstrip(".").lower()
    return f"[{address.compressed}]" if address.version == 6 else address.compressed


@dataclass(frozen=True)
class EndpointPath:
    """A path on the node (no scheme, host, query, fragment or dot segments), stored without the leading '/'."""

    directory: bool = False  # the BBB API path: call names are appended, so it ends in '/'
    max_length: int = MAX_TEXT

    def parse(self, text: str) -> str:
        return self.check(text)

    def check(self, value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError(f"must be a path, got {_shown(value)}")
        problem = _path_problem(value, self.max_length)
        if problem:
            raise ValueError(f"invalid path {_shown(value)}: {problem}")
        path = value.lstrip("/")
        if self.directory and path and not path.endswith("/"):
            path += "/"
        if len(path) > self.max_length:
            raise ValueError(f"invalid path {_shown(value)}: longer than {self.max_length} characters")
        return path


def _path_problem(text: str, max_length: int) -> str:
    if len(text) > max_length:
        return f"longer than {max_length} characters"
    path = text.lstrip("/")
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", path) or text.startswith("//"):
        return "a path only, e.g. bigbluebutton/api/ (no scheme or host)"
    if "?" in path or "#" in path:
        return "no query or fragment"
    if not re.fullmatch(r"[A-Za-z0-9._~!$&'()*+,;=:@/%-]*", path):
        return "only the characters of a URL path (percent-encode others)"
    if re.search(r"%(?![0-9A-Fa-f]{2})", path):
        return "'%' must start a %XX escape"
    if any(segment in (".", "..") for segment in unquote(path).split("/")):
        return "no '.' or '..' segments"
    return ""


# The rules of the admin commands ------------------------------------------------------------

_SECRET_LABEL = re.compile(r"([A-Za-z]{2,10})(?:-([0-9]{1,3}))?")


_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def parse_bool(text: str) -> bool:
    """A yes/no word of the CLI or a query parameter: true/yes/on/1 or false/no/off/0, any case."""
    word = text.strip().lower() if isinstance(text, str) else ""
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError(f"expected true or false (yes/no, on/off, 1/0), got {_shown(text)}")


def parse_tenant_slug(text: str) -> str:
    """A tenant slug, stored upper-case: 2 to 10 letters A-Z."""
    slug = text.strip().upper() if isinstance(text, str) else ""
    if not re.fullmatch(r"[A-Z]{2,10}", slug):
        raise ValueError(f"invalid tenant slug {_shown(text)}: 2 to 10 letters A-Z required")
    return slug


def parse_sub_id(text: str) -> int:
    try:
        return SUB_ID.parse(text)
    except ValueError:
        raise ValueError(f"invalid sub-id {_shown(text)}: a number from 0 to {MAX_SUB_ID} required") from None


def parse_sub_ids(text: str) -> range:
    """`N` or `N-M` (inclusive, N <= M), each 0..999."""
    first, dash, last = text.strip().partition("-")
    start = parse_sub_id(first)
    end = parse_sub_id(last) if dash else start
    if end < start:
        raise ValueError(f"invalid sub-id range {_shown(text)}: {start} is greater than {end}")
    return range(start, end + 1)


def check_sub_ids(sub_ids: range) -> range:
    """A range of sub-ids (admin API form of `N-M`) within 0..999."""
    if sub_ids.step != 1 or not sub_ids or sub_ids.start < 0 or sub_ids.stop - 1 > MAX_SUB_ID:
        raise ValueError(f"sub-id: a non-empty range within 0..{MAX_SUB_ID} required, got {sub_ids}")
    return sub_ids


def parse_secret_label(text: str) -> tuple[str, int]:
    """`ABC` (sub-id 0) or `ABC-001` / `ABC-1` -> (tenant slug, sub-id)."""
    match = _SECRET_LABEL.fullmatch(text.strip())
    if not match:
        raise ValueError(f"invalid secret {_shown(text)}: TENANT or TENANT-NNN expected, e.g. ABC-001")
    return parse_tenant_slug(match.group(1)), int(match.group(2) or 0)



FACTOR = Number(0.0, MAX_FACTOR)
CPU_ITERATIONS = Whole(0, MAX_CPU_ITERATIONS)
CPU_MAXIMUM = Whole(0, MAX_CPU_MAXIMUM)
LIMIT = Whole(0, MAX_LIMIT)
PORT = Whole(1, 65535)
HOLD_DAYS = Whole(0, MAX_HOLD_DAYS)
SUB_ID = Whole(0, MAX_SUB_ID)
PIXELS = Whole(1, MAX_PIXELS)
ROW_ID = Whole(1, MAX_ROW_ID)
NAME = Text()
NODE_SLUG = Text(pattern=r"[-a-zA-Z0-9_]+", hint="letters, digits, '-' and '_' only", strip=False)
NODE_SECRET = Text(spaces=False, pattern=r"[!-~]+", hint="printable ASCII characters only", strip=False)
HOST = HostName()
BBB_ENDPOINT = EndpointPath(directory=True)
LOAD_ENDPOINT = EndpointPath()
SHA = Choice(("SHA256", "SHA384", "SHA512"))
PROTOCOL = Choice(("http", "https"), upper=False)
RECORD_FORMAT = Choice(("MP4", "WEBM"))
PARAMETER_NAME = Text(max_length=MAX_PARAMETER, spaces=False, strip=False)
PARAMETER_VALUE = Text(max_length=MAX_PARAMETER, min_length=0, strip=False)
MEETING_ID = Text(max_length=MAX_TEXT, strip=False)
DESCRIPTION = Text(max_length=MAX_TEXT, min_length=0)  # '' clears it

# Settings field -> (option name for messages, rule). Boolean fields need no rule.
CLUSTER_FIELDS: dict[str, tuple[str, Rule]] = {
    "a_factor": ("a-factor", FACTOR),
    "m_factor": ("m-factor", FACTOR),
    "cpu_iterations": ("cpu-iterations", CPU_ITERATIONS),
    "cpu_maximum": ("cpu-maximum", CPU_MAXIMUM),
    "sha": ("sha", SHA),
}
NODE_FIELDS: dict[str, tuple[str, Rule]] = {
    "domain": ("domain", HOST),
    "secret": ("secret", NODE_SECRET),
    "protocol": ("protocol", PROTOCOL),
    "port": ("port", PORT),
    "bbb_endpoint": ("bbb-endpoint", BBB_ENDPOINT),
    "load_endpoint": ("load-endpoint", LOAD_ENDPOINT),
}
LIMIT_FIELDS: dict[str, tuple[str, Rule]] = {
    "attendee_limit": ("attendee-limit", LIMIT),
    "meeting_limit": ("meeting-limit", LIMIT),
    "hold_time_days": ("hold-time-days", HOLD_DAYS),
}
TENANT_FIELDS: dict[str, tuple[str, Rule]] = {"cluster_group": ("clustergroup", NAME), **LIMIT_FIELDS}
SECRET_FIELDS: dict[str, tuple[str, Rule]] = {**LIMIT_FIELDS, "description": ("description", DESCRIPTION)}
PROFILE_FIELDS: dict[str, tuple[str, Rule]] = {
    "width": ("width", PIXELS),
    "height": ("height", PIXELS),
    "webcam_width": ("webcam-width", PIXELS),
    "webcam_height": ("webcam-height", PIXELS),
    "format": ("format", RECORD_FORMAT),
}


def check_fields(settings: Settings, fields: dict[str, tuple[str, Rule]]) -> Settings:
    """`settings` (a dataclass) with every non-None field checked and normalised by its rule."""
    changes: dict[str, Any] = {}
    for field_name, (option, rule) in fields.items():
        value = getattr(settings, field_name)
        if value is None:
            continue
        try:
            changes[field_name] = rule.check(value)
        except ValueError as exc:
            raise ValueError(f"{option}: {exc}") from None
    return dataclasses.replace(settings, **changes)  # type: ignore[type-var]


def check_value(option: str, rule: Rule, value: Any) -> Any:
    """One value checked by its rule; the message names the option."""
    try:
        return rule.check(value)
    except ValueError as exc:
        raise ValueError(f"{option}: {exc}") from None


def require_change(settings: Any) -> None:
    """A `set` that changes nothing is refused (the CLI and the admin API alike), not logged as a write."""
    if all(value is None for value in dataclasses.asdict(settings).values()):
        raise ValueError("settings: nothing to change: give at least one setting")
