"""Availability of what b3lb depends on (PostgreSQL, Redis), logged when it changes, not per failure.

During a database outage every create, every table refresh and every counter flush fails; one
log line each would bury the one fact that matters (the database is gone since 10:04:31, back at
10:04:43). An `Outage` tracks one dependency as seen by one part of b3lb: `failed(reason)` logs a
warning only when the dependency goes down, `succeeded()` logs once when it is back, with how long
it was gone. Every failure is counted in `b3lb_{dependency}_errors_total`, and
`b3lb_{dependency}_up` is 0 while any tracker of that dependency in this process sees it down.
"""

from __future__ import annotations

import logging
import time
import weakref

import asyncpg
from prometheus_client import Counter, Gauge

log = logging.getLogger("b3lb.outage")

# SQLSTATE classes that mean "the database cannot serve us now", not "this statement is wrong":
# connection exception, insufficient resources, operator intervention (shutdown, starting up,
# statement timeout), system error (I/O), and a read-only server (a standby after a failover).
_UNAVAILABLE_POSTGRES = (
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.PostgresSystemError,
    asyncpg.exceptions.ReadOnlySQLTransactionError,
)


def is_database_unavailable(exc: BaseException) -> bool:
    """True when `exc` says the database is unreachable, restarting or overloaded.

    Covers refused/reset connections (OSError, ConnectionError), pool acquire and command
    timeouts (TimeoutError), connections the server dropped (asyncpg.InterfaceError, e.g.
    "connection is closed"; ConnectionDoesNotExistError), and the server's own "cannot connect
    now" / shutdown errors. A statement the server rejects (bad data, a constraint, a typo in
    SQL) is a bug, not an outage: it keeps its traceback.
    """
    if isinstance(exc, (asyncpg.exceptions.DataError, asyncpg.exceptions.ClientConfigurationError)):
        return False  # InterfaceError subclasses raised for bad arguments, before anything is sent
    return isinstance(exc, (OSError, TimeoutError, asyncpg.InterfaceError, *_UNAVAILABLE_POSTGRES))


def describe(reason: object) -> str:
    """A one-line reason: the exception's type and message (asyncpg's often have no message)."""
    if isinstance(reason, BaseException):
        text = str(reason).strip().splitlines()[0] if str(reason).strip() else ""
        return f"{type(reason).__name__}: {text}" if text else type(reason).__name__
    return str(reason)


_ERRORS: dict[str, Counter] = {}
# dependency -> trackers that see it down now (weak: a discarded runtime must not keep it "down")
_DOWN: dict[str, weakref.WeakSet[Outage]] = {}


def _register(dependency: str) -> Counter:
    """The dependency's error counter, and its up gauge, created once per process."""
    if dependency not in _ERRORS:
        down: weakref.WeakSet[Outage] = weakref.WeakSet()
        _DOWN[dependency] = down
        _ERRORS[dependency] = Counter(
            f"b3lb_{dependency}_errors", f"Operations of this process that failed because the {dependency} "
            "was unavailable")
        up = Gauge(f"b3lb_{dependency}_up", f"1 while this process reaches the {dependency}, 0 during an outage")
        up.set_function(lambda: 0.0 if len(down) else 1.0)
    return _ERRORS[dependency]


class _PoolFloorFilter(logging.Filter):
    """Drops asyncpg's "Failed to restore the pool connection floor" tracebacks during an outage.

    asyncpg's pool reconnects its minimum connections in the background and logs each failed
    attempt with a traceback (1, 2, 4 ... 60 s apart); b3lb's own trackers already report the
    outage once. Other asyncpg records, and that one for other errors, pass unchanged.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (error is not None and record.getMessage().startswith("Failed to restore the pool connection")
                    and is_database_unavailable(error))


def quiet_pool_reconnects() -> None:
    """Install the filter above once (idempotent); every process importing this module gets it."""
    pool_log = logging.getLogger("asyncpg.pool")
    if not any(isinstance(f, _PoolFloorFilter) for f in pool_log.filters):
        pool_log.addFilter(_PoolFloorFilter())


quiet_pool_reconnects()


class Outage:
    """The state of one dependency as one part of b3lb sees it.

    `name` starts the log lines ("database unavailable: ...", "database available again after
    12.3 s"); `failure_text` replaces the first one where a part has its own wording.
    """

    def __init__(
        self,
        name: str,
        *,
        dependency: str | None = None,
        logger: logging.Logger | None = None,
        failure_text: str | None = None,
    ) -> None:
        self.name = name
        self.dependency = dependency or name
        self.log = logger or log
        self.failure_text = failure_text or f"{name} unavailable"
        self.down_since: float | None = None  # monotonic time of the first failure of this outage
        self.failures = 0  # failures since down_since
        self._errors = _register(self.dependency)

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def failed(self, reason: object) -> None:
        """One failed operation; logs (warning) only the first of an outage."""
        self._errors.inc()
        self.failures += 1
        if self.down_since is None:
            self.down_since = time.monotonic()
            _DOWN[self.dependency].add(self)
            self.log.warning("%s: %s", self.failure_text, describe(reason), extra={"dependency": self.dependency})

    def succeeded(self) -> None:
        """One operation went through; ends an outage (logged once, at info, with its duration)."""
        if self.down_since is None:
            return
        seconds = time.monotonic() - self.down_since
        failures, self.down_since, self.failures = self.failures, None, 0
        _DOWN[self.dependency].discard(self)
        self.log.info("%s available again after %.1f s (%d failed operations)", self.name, seconds, failures,
                      extra={"dependency": self.dependency, "outage_seconds": round(seconds, 3)})
