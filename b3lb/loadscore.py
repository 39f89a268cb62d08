"""The node load formula of the data model, shared by node choice, the CLI and the metrics.

It runs for every node on every directory refresh and poll, so it is O(1) whatever the cluster
settings say, and it clamps them to the bounds of b3lb/validation.py: a value stored before those
bounds existed (or written with psql) can neither freeze the event loop nor make a load NaN.
"""

from __future__ import annotations

import math

from b3lb.validation import MAX_CPU_ITERATIONS, MAX_CPU_MAXIMUM, MAX_FACTOR

MAINTENANCE_LOAD = -2.0
ERROR_LOAD = -1.0


def node_state(has_errors: bool, maintenance: bool) -> str:
    """ok, error or maintenance; error first: a node in maintenance that went down shows as down
    (the CLI, the dashboard, the metrics and meeting listings all say it this way)."""
    return "error" if has_errors else "maintenance" if maintenance else "ok"


def _within(value: float, low: float, high: float) -> float:
    """`value` clamped to [low, high]; NaN counts as `low`."""
    if not value >= low:  # also true for NaN
        return low
    return min(value, high)


def cpu_term(cpu_load: float, iterations: int, cpu_maximum: int) -> float:
    """`C/n · Σ_{k=1..n} x^k` with x = cpu/100: a polynomial that grows steeply as the CPU fills up.

    Closed form of the geometric series, x·(1 − xⁿ)/(1 − x), instead of n multiplications. It is
    written with expm1/log1p and 1 − x taken from (100 − cpu) so that x close to 1 keeps full
    precision; x = 0 gives 0 and x = 1 gives the limit, C.
    """
    n = int(_within(iterations, 0, MAX_CPU_ITERATIONS))
    maximum = _within(cpu_maximum, 0, MAX_CPU_MAXIMUM)
    cpu = _within(cpu_load, 0.0, 100.0)
    if n == 0 or cpu == 0.0:
        return 0.0
    if cpu == 100.0:
        return maximum
    ratio = cpu / 100.0
    gap = (100.0 - cpu) / 100.0  # 1 − x without the cancellation of 1.0 − ratio
    series = ratio * -math.expm1(n * math.log1p(-gap)) / gap  # Σ_{k=1..n} x^k
    return maximum / n * series


def load_score(
    *,
    attendees: int,
    meetings: int,
    cpu_load: float,
    maintenance: bool,
    has_errors: bool,
    a_factor: float,
    m_factor: float,
    iterations: int,
    cpu_maximum: int,
) -> float:
    """Load of one node: -2 in maintenance, -1 in error, else attendees·a + meetings·m + cpu term."""
    if maintenance:
        return MAINTENANCE_LOAD
    if has_errors:
        return ERROR_LOAD
    a = _within(a_factor, 0.0, MAX_FACTOR)
    m = _within(m_factor, 0.0, MAX_FACTOR)
    return max(attendees, 0) * a + max(meetings, 0) * m + cpu_term(cpu_load, iterations, cpu_maximum)
