"""The HTTP scenarios: which requests each sends and what a correct answer looks like.

Every request is signed beforehand; the load generators only cycle through the resulting paths.
Scenarios that must not repeat a request (join: distinct users; create: new meetings) get as
many paths as the run can plausibly send, and warm-up and measurement never share a path.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.stack import (
    BASE_DOMAIN,
    METRICS_ADMIN_TOKEN,
    create_params,
    precreated_ids,
    signed_path,
    tenant_host,
)

SUCCESS = "<returncode>SUCCESS</returncode>"
MAX_DISTINCT = 200_000  # cap of distinct join users / new meeting IDs per phase
PLAUSIBLE_RPS = 8_000  # more than this stack serves on one core: sizing of distinct path lists

# The order in which scenarios run: `create` last, because every request leaves a meeting on the
# fake nodes that later poll cycles (and the server's meeting table) carry along.
ORDER = (
    "ceiling", "ping", "metrics", "join", "join-1c", "isMeetingRunning", "getMeetingInfo",
    "getMeetings-50", "getMeetings-500", "create-repeat", "create", "poll", "getRecordings", "render",
)
HTTP_SCENARIOS = ORDER[:-3]

PathMaker = Callable[[str, int], list[str]]  # (phase "w"/"m", how many) -> request paths


@dataclass
class Scenario:
    name: str
    connections: int
    host: str
    make_paths: PathMaker
    distinct: bool = False  # each request must differ from all others (size the list by duration)
    expect_status: int = 200
    contains: str = ""
    excludes: str = ""
    count_tag: str = ""
    count: int = 0
    ceiling: bool = False  # served by the hello-world process, not by b3lb
    headers: dict[str, str] = field(default_factory=dict)  # sent with every request besides Host

    def paths(self, phase: str, duration: float) -> list[str]:
        wanted = min(MAX_DISTINCT, int(PLAUSIBLE_RPS * max(duration, 0.5)) + 1000) if self.distinct else 0
        return self.make_paths(f"{self.name}-{phase}", wanted)

    def write_paths(self, folder: Path, phase: str, duration: float) -> Path:
        path = folder / f"paths-{self.name}-{phase}.txt"
        path.write_text("\n".join(self.paths(phase, duration)) + "\n", encoding="ascii")
        return path


def _cycle(paths: list[str]) -> PathMaker:
    return lambda phase, wanted: paths


def build(secrets_by_slug: dict[str, str], connections: int) -> dict[str, Scenario]:
    """All HTTP scenarios for a stack seeded with these tenant secrets."""
    run = secrets.token_hex(3)  # new meeting IDs differ from any earlier run on the same fleet
    join_secret, join_ids = secrets_by_slug["JOIN"], precreated_ids("JOIN")

    def joins(phase: str, wanted: int) -> list[str]:
        return [
            signed_path(
                "join",
                [
                    ("fullName", f"User {phase}{number}"),
                    ("meetingID", join_ids[number % len(join_ids)]),
                    ("role", "VIEWER"),
                    ("userID", f"u-{run}-{phase}-{number}"),
                ],
                join_secret,
            )
            for number in range(wanted)
        ]

    def creates(phase: str, wanted: int) -> list[str]:
        secret = secrets_by_slug["CREATE"]
        return [
            signed_path("create", create_params(f"c-{run}-{phase}-{n}", f"Bench create {n}"), secret)
            for n in range(wanted)
        ]

    def per_meeting(call: str) -> list[str]:
        return [signed_path(call, [("meetingID", meeting_id)], join_secret) for meeting_id in join_ids]

    repeats = [signed_path("create", create_params(m, f"Room {m}"), join_secret) for m in join_ids]
    join_host = tenant_host("JOIN")
    api = {"contains": SUCCESS, "excludes": "FAILED"}
    scenarios = [
        Scenario("ceiling", connections, BASE_DOMAIN, _cycle(["/"]), contains="Hello", ceiling=True),
        Scenario("ping", connections, BASE_DOMAIN, _cycle(["/b3lb/ping"]), contains="OK!"),
        Scenario("metrics", connections, BASE_DOMAIN, _cycle(["/b3lb/metrics"]), contains="b3lb_node_load",
                 headers={"Authorization": METRICS_ADMIN_TOKEN}),  # the global view needs the admin token
        Scenario("join", connections, join_host, joins, distinct=True, expect_status=302),
        Scenario("join-1c", 1, join_host, joins, distinct=True, expect_status=302),
        Scenario("isMeetingRunning", connections, join_host, _cycle(per_meeting("isMeetingRunning")), **api),
        Scenario("getMeetingInfo", connections, join_host, _cycle(per_meeting("getMeetingInfo")), **api),
        Scenario("create-repeat", connections, join_host, _cycle(repeats), **api),
        Scenario("create", connections, tenant_host("CREATE"), creates, distinct=True, **api),
    ]
    for slug, name in (("SMALL", "getMeetings-50"), ("BENCH", "getMeetings-500")):
        listed = len(precreated_ids(slug))
        path = signed_path("getMeetings", [], secrets_by_slug[slug])
        scenarios.append(
            Scenario(name, connections, tenant_host(slug), _cycle([path]), count_tag="<meetingID>", count=listed, **api)
        )
    by_name = {s.name: s for s in scenarios}
    return {name: by_name[name] for name in HTTP_SCENARIOS}
