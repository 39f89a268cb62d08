"""The node load formula of the data model, shared by node choice, the CLI and the metrics."""

from __future__ import annotations

MAINTENANCE_LOAD = -2.0
ERROR_LOAD = -1.0


def cpu_term(cpu_load: float, iterations: int, cpu_maximum: int) -> float:
    """`C/n · Σ_{k=1..n} (cpu/100)^k`: a polynomial that grows steeply as the CPU fills up."""
    if iterations <= 0:
        return 0.0
    ratio = min(max(cpu_load, 0.0), 100.0) / 100.0
    total = 0.0
    power = 1.0
    for _ in range(iterations):
        power *= ratio
        total += power
    return cpu_maximum / iterations * total


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
    return attendees * a_factor + meetings * m_factor + cpu_term(cpu_load, iterations, cpu_maximum)
