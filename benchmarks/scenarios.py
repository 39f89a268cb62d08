"""The HTTP scenarios: on which stack each runs, which requests it sends, what a correct answer is.

Requests that may repeat are signed here and cycled through by the load generator. Requests that
must all differ (join: a new user each; create: a new meeting each) are a template the generator
fills with each request's number and signs as it sends (benchmarks/loadgen.py `Template`), with a
prefix per measurement so no two measurements share one.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from b3lb.checksum import encode_params
from benchmarks.stack import (
    BASE_DOMAIN,
    METRICS_ADMIN_TOKEN,
    PASSWORDS,
    create_params,
    precreated_ids,
    signed_path,
    tenant_host,
)

SUCCESS = "<returncode>SUCCESS</returncode>"

# Stacks in the order they run, and their scenarios in order: `create` last on each stack,
# because every request leaves a meeting on the fake nodes that later poll cycles carry along.
STACKS: dict[str, tuple[str, ...]] = {
    "http": ("ping", "join", "join-1c", "isMeetingRunning", "getMeetingInfo", "getMeetings-50",
             "getMeetings-500", "create-repeat", "create-1c", "create"),
    "tls": ("getMeetingInfo-tls", "isMeetingRunning-tls", "create-tls"),
    "tls-chunked-gzip": ("getMeetingInfo-tls-chunked-gzip",),
    "metrics": ("metrics", "metrics-tenant"),
    "scale": ("scale",),
    "workers": ("workers",),
}  # fmt: skip
HTTP_SCENARIOS = tuple(name for names in STACKS.values() for name in names)
OTHER_SCENARIOS = ("poll", "getRecordings", "render")
ORDER = (*HTTP_SCENARIOS, *OTHER_SCENARIOS)
STACK_OF = {name: stack for stack, names in STACKS.items() for name in names}
# The pre-created meetings (tenant) each scenario needs; a stack pre-creates those of its selected ones.
NEEDS = {"join": "JOIN", "join-1c": "JOIN", "isMeetingRunning": "JOIN", "getMeetingInfo": "JOIN",
         "create-repeat": "JOIN", "getMeetings-50": "SMALL", "getMeetings-500": "BENCH", "scale": "JOIN",
         "workers": "JOIN", "getMeetingInfo-tls": "JOIN", "isMeetingRunning-tls": "JOIN",
         "getMeetingInfo-tls-chunked-gzip": "JOIN"}  # fmt: skip
# What --quick runs unless --scenarios says otherwise: every stack and code path once, at tiny sizes.
QUICK_SCENARIOS = ("join", "create", "create-tls", "getMeetingInfo-tls-chunked-gzip", "metrics", "scale", "workers",
                   *OTHER_SCENARIOS)  # fmt: skip


def precreate_for(stack: str, selected: list[str]) -> dict[str, int]:
    return {NEEDS[n]: len(precreated_ids(NEEDS[n])) for n in STACKS[stack] if n in selected and n in NEEDS}


PathMaker = Callable[[str, int], list[str]]  # (phase, how many) -> request paths
TemplateMaker = Callable[[str], dict[str, Any]]  # phase -> loadgen.Template fields
N, ITEM = "__N__", "__ITEM__"  # placeholders that survive URL encoding


@dataclass
class Scenario:
    name: str
    connections: int
    host: str
    make_paths: PathMaker | None = None  # requests cycled through
    template: TemplateMaker | None = None  # or: every request different, made by the generator
    expect_status: int = 200
    contains: str = ""
    excludes: str = ""
    count_tag: str = ""
    count: int = 0
    headers: dict[str, str] = field(default_factory=dict)  # sent with every request besides Host
    join_slug: str = ""  # check every Location against the owning node of this tenant's meetings

    def write_paths(self, folder: Path, phase: str) -> str:
        """The file of request paths ("" for a template scenario)."""
        if self.make_paths is None:
            return ""
        path = folder / f"paths-{self.name}-{phase}.txt"
        path.write_text("\n".join(self.make_paths(f"{self.name}-{phase}", 0)) + "\n", encoding="ascii")
        return str(path)

    def template_for(self, phase: str) -> dict[str, Any] | None:
        return self.template(f"{self.name}-{phase}") if self.template is not None else None


def _cycle(paths: list[str]) -> PathMaker:
    return lambda phase, wanted: paths


def hello(connections: int) -> Scenario:
    """A yardstick measurement: any hello-world server answers `/` with `Hello, world`."""
    return Scenario("hello", connections, BASE_DOMAIN, _cycle(["/"]), contains="Hello, world")


def join_template(secret: str, meeting_ids: list[str]) -> TemplateMaker:
    """A join of the meetings in turn by a new user each time (fullName and userID carry the number)."""
    run = secrets.token_hex(3)

    def template(phase: str) -> dict[str, Any]:
        query = encode_params([("fullName", f"User {phase} {N}"), ("meetingID", ITEM), ("role", "VIEWER"),
                               ("userID", f"u-{run}-{phase}-{N}")])  # fmt: skip
        return {"call": "join", "query": query.replace(N, "{n}").replace(ITEM, "{item}"), "items": meeting_ids,
                "secret": secret}  # fmt: skip

    return template


def create_template(secret: str) -> TemplateMaker:
    """A create of a new meeting each time (its ID carries the run, the phase and the number)."""
    run = secrets.token_hex(3)  # new meeting IDs differ from any earlier run on the same fleet

    def template(phase: str) -> dict[str, Any]:
        query = encode_params([("name", f"Bench create {N}"), ("meetingID", f"c-{run}-{phase}-{N}"), *PASSWORDS])
        return {"call": "create", "query": query.replace(N, "{n}"), "items": [""], "secret": secret}

    return template


def build(stack: str, secrets_by_slug: dict[str, str], connections: int) -> dict[str, Scenario]:
    """The HTTP scenarios of one stack, seeded with these tenant secrets."""
    if stack == "metrics":
        return _metrics(secrets_by_slug, connections)
    if stack in ("scale", "workers"):
        join_secret = secrets_by_slug["JOIN"]
        return {
            "join": Scenario("join", connections, tenant_host("JOIN"), template=join_template(join_secret,
                             precreated_ids("JOIN")), expect_status=302, join_slug="JOIN"),
            "create": Scenario("create", connections, tenant_host("CREATE"),
                               template=create_template(secrets_by_slug["CREATE"]), contains=SUCCESS),
        }  # fmt: skip
    suffix = "" if stack == "http" else f"-{stack}"
    join_secret, join_ids = secrets_by_slug["JOIN"], precreated_ids("JOIN")
    join_host = tenant_host("JOIN")

    def per_meeting(call: str) -> PathMaker:
        return _cycle([signed_path(call, [("meetingID", meeting_id)], join_secret) for meeting_id in join_ids])

    joins = join_template(join_secret, join_ids)
    creates = create_template(secrets_by_slug["CREATE"])
    repeats = [signed_path("create", create_params(m, f"Room {m}"), join_secret) for m in join_ids]
    create_host = tenant_host("CREATE")
    scenarios = [
        Scenario("ping", connections, BASE_DOMAIN, _cycle(["/b3lb/ping"]), contains="OK!"),
        Scenario("join", connections, join_host, template=joins, expect_status=302, join_slug="JOIN"),
        Scenario("join-1c", 1, join_host, template=joins, expect_status=302, join_slug="JOIN"),
        Scenario("isMeetingRunning" + suffix, connections, join_host, per_meeting("isMeetingRunning"),
                 contains=SUCCESS),
        Scenario("getMeetingInfo" + suffix, connections, join_host, per_meeting("getMeetingInfo"), contains=SUCCESS),
        Scenario("create-repeat", connections, join_host, _cycle(repeats), contains=SUCCESS),
        Scenario("create-1c", 1, create_host, template=creates, contains=SUCCESS),
        Scenario("create" + suffix, connections, create_host, template=creates, contains=SUCCESS),
    ]  # fmt: skip
    for slug, name in (("SMALL", "getMeetings-50"), ("BENCH", "getMeetings-500")):
        if slug in secrets_by_slug:
            listed = len(precreated_ids(slug))
            path = signed_path("getMeetings", [], secrets_by_slug[slug])
            scenarios.append(Scenario(name, connections, tenant_host(slug), _cycle([path]), contains=SUCCESS,
                                      count_tag="<meetingID>", count=listed))  # fmt: skip
    by_name = {s.name: s for s in scenarios}
    return {name: by_name[name] for name in STACKS[stack]}


def _metrics(secrets_by_slug: dict[str, str], connections: int) -> dict[str, Scenario]:
    first = sorted(secrets_by_slug)[0]
    # the global view needs the admin token; Prometheus always asks for gzip
    admin = {"Authorization": METRICS_ADMIN_TOKEN, "Accept-Encoding": "gzip"}
    return {
        "metrics": Scenario("metrics", connections, BASE_DOMAIN, _cycle(["/b3lb/metrics"]),
                            contains="b3lb_node_load", headers=admin),
        # the same token on a tenant's host opens that tenant's view (its 10 secrets)
        "metrics-tenant": Scenario("metrics-tenant", connections, tenant_host(first), _cycle(["/b3lb/metrics"]),
                                   contains="b3lb_secret_meeting_limit", excludes="b3lb_node_load", headers=admin),
    }  # fmt: skip
