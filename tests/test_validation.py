"""The rules of b3lb/validation.py, the admin operations that apply them, and the load formula."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import asyncpg
import pytest

from b3lb import validation as V
from b3lb.admin import fleet as admin
from b3lb.admin import meetings as admin_meeting
from b3lb.admin import tenants as admin_tenant
from b3lb.admin.fleet import ClusterSettings, NodeSettings
from b3lb.admin.tenants import ParameterRule, ProfileSettings, SecretSettings, TenantSettings
from b3lb.loadscore import cpu_term, load_score

# Numbers -----------------------------------------------------------------------------------

BOUNDS = [
    (V.CPU_ITERATIONS, 0, 100),
    (V.CPU_MAXIMUM, 0, 1_000_000),
    (V.LIMIT, 0, 10_000_000),
    (V.PORT, 1, 65535),
    (V.SUB_ID, 0, 999),
    (V.PIXELS, 1, 8192),
    (V.ROW_ID, 1, 2**31 - 1),
]


@pytest.mark.parametrize(("rule", "low", "high"), BOUNDS)
def test_whole_number_bounds(rule: V.Whole, low: int, high: int) -> None:
    assert rule.parse(str(low)) == low and rule.parse(f" {high} ") == high
    assert rule.check(low) == low and rule.check(high) == high
    for text in (str(low - 1), str(high + 1), "1000000000000", "9" * 5000, "", "x", "1.0", "1e3", "1_0", "٣", "0x10"):
        with pytest.raises(ValueError, match=f"from {low} to {high}"):
            rule.parse(text)
    for value in (low - 1, high + 1, True, "5", 5.0, None):
        with pytest.raises(ValueError):
            rule.check(value)


def test_factor_bounds() -> None:
    assert V.FACTOR.parse("0") == 0.0 and V.FACTOR.parse("2.5") == 2.5 and V.FACTOR.parse("1e6") == 1_000_000
    assert V.FACTOR.check(3) == 3.0
    for text in ("-0.1", "1000000.5", "nan", "inf", "-inf", "x", "", "1" * 50):
        with pytest.raises(ValueError, match="from 0 to 1000000"):
            V.FACTOR.parse(text)
    for value in (math.nan, math.inf, -1, True, "1"):
        with pytest.raises(ValueError):
            V.FACTOR.check(value)


# Host names --------------------------------------------------------------------------------

GOOD_HOSTS = [
    ("bbb1.example.org", "bbb1.example.org"),
    ("BBB1.Example.ORG.", "bbb1.example.org"),
    ("localhost", "localhost"),
    ("bbb_node-1", "bbb_node-1"),
    ("xn--bcher-kva.example", "xn--bcher-kva.example"),
    ("a" * 63 + ".example.org", "a" * 63 + ".example.org"),
    (".".join(["abcdefghi"] * 20), ".".join(["abcdefghi"] * 20)),  # 199 characters
    ("127.0.0.1", "127.0.0.1"),
    ("192.0.2.10", "192.0.2.10"),
    ("::1", "[::1]"),
    ("[2001:DB8:0:0::1]", "[2001:db8::1]"),
    ("1.example.org", "1.example.org"),
]

BAD_HOSTS = [
    ("a/b?c", "no path"),
    ("bbb.example.org/bigbluebutton", "no path"),
    ("bbb.example.org?x=1", "no path"),
    ("bbb.example.org#x", "no path"),
    ("bbb\\example", "no path"),
    ("https://bbb.example.org", "scheme"),
    ("user:pw@bbb.example.org", "user name"),
    ("bbb.example.org:8443", "no port"),
    ("[bbb.example.org]", "no port"),
    ("[1.2.3.4]", "no port"),
    ("bbb example.org", "spaces"),
    (" bbb.example.org", "spaces"),
    ("bbb.example.org\n", "spaces"),
    ("bbb\u2028example.org", "spaces"),
    ("", "empty"),
    ("a" * 64 + ".example.org", "labels of 1 to 63"),
    ("-bbb.example.org", "labels"),
    ("bbb-.example.org", "labels"),
    ("bbb..example.org", "labels"),
    (".", "labels"),
    ("bbb!.example.org", "labels"),
    ("bücher.example", "xn--"),
    ("127.1", "IP address"),
    ("1.2.3.999", "IP address"),
    ("0x7f000001", "IP address"),
    ("2130706433", "IP address"),
    ("fe80::1%eth0", "scoped"),
    (".".join(["abcdefghi"] * 21), "longer than 200"),
]


@pytest.mark.parametrize(("text", "stored"), GOOD_HOSTS)
def test_good_host_names(text: str, stored: str) -> None:
    assert V.HOST.parse(text) == stored


@pytest.mark.parametrize(("text", "reason"), BAD_HOSTS)
def test_bad_host_names(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=f"invalid host name .*{reason}"):
        V.HOST.parse(text)


# Paths and text ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "text", "stored"),
    [
        (V.BBB_ENDPOINT, "bigbluebutton/api/", "bigbluebutton/api/"),
        (V.BBB_ENDPOINT, "/bigbluebutton/api", "bigbluebutton/api/"),
        (V.BBB_ENDPOINT, "", ""),
        (V.LOAD_ENDPOINT, "b3lb/load", "b3lb/load"),
        (V.LOAD_ENDPOINT, "/~bbb/load%20now;v=1", "~bbb/load%20now;v=1"),
        (V.LOAD_ENDPOINT, "a/b:c", "a/b:c"),
    ],
)
def test_good_endpoints(rule: V.EndpointPath, text: str, stored: str) -> None:
    assert rule.parse(text) == stored


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("http://bbb.example.org/api/", "no scheme"),
        ("javascript:alert(1)", "no scheme"),
        ("//evil.example.org/api/", "no scheme"),
        ("api/?secret=1", "no query"),
        ("api/#top", "no query"),
        ("../admin/", r"'\.\.'"),
        ("api/../../etc/", r"'\.\.'"),
        ("api/./x", r"'\.\.'"),
        ("api/%2e%2E/x", r"'\.\.'"),
        ("api/%zz", "%XX"),
        ("api /", "characters of a URL path"),
        ("api/\u00e9", "characters of a URL path"),
        ("a" * 201, "longer than 200"),
    ],
)
def test_bad_endpoints(text: str, reason: str) -> None:
    for rule in (V.BBB_ENDPOINT, V.LOAD_ENDPOINT):
        with pytest.raises(ValueError, match=f"invalid path .*{reason}"):
            rule.parse(text)


def test_text_rules() -> None:
    assert V.NAME.parse("  main cluster ") == "main cluster"
    assert V.NAME.parse("x" * 200) == "x" * 200
    for bad in ("", "   ", "x" * 201, "a\tb", "a\x00b", "a\u202eb", "line\nbreak"):
        with pytest.raises(ValueError):
            V.NAME.parse(bad)
    assert V.NODE_SLUG.parse("bbb-1_a") == "bbb-1_a"
    for bad in ("bbb 1", "bbb/1", "x" * 201, ""):
        with pytest.raises(ValueError):
            V.NODE_SLUG.parse(bad)
    assert V.NODE_SECRET.parse("s3cr3t!~") == "s3cr3t!~"
    for bad in ("a b", "sécret", "x" * 201, "", "a\x7fb"):
        with pytest.raises(ValueError):
            V.NODE_SECRET.parse(bad)
    assert V.PARAMETER_VALUE.parse("") == "" and V.PARAMETER_VALUE.parse("Hello world") == "Hello world"
    with pytest.raises(ValueError):
        V.PARAMETER_VALUE.parse("v" * 201)
    with pytest.raises(ValueError):
        V.PARAMETER_VALUE.parse("true\n")


def test_one_boolean_parser() -> None:
    """The CLI's true|false options, `secret set --recording` and the admin API's ?force= all parse with it."""
    for word in ("true", " Yes", "ON", "1"):
        assert V.parse_bool(word) is True
    for word in ("false", "no ", "Off", "0"):
        assert V.parse_bool(word) is False
    for bad in ("", "maybe", "2", "truee", "t"):
        with pytest.raises(ValueError, match="expected true or false"):
            V.parse_bool(bad)


def test_descriptions() -> None:
    assert V.DESCRIPTION.parse("  Moodle production ") == "Moodle production" and V.DESCRIPTION.parse("") == ""
    for bad in ("line\nbreak", "tab\there", "bell\x07", "x" * 201, "bidi\u202e"):
        with pytest.raises(ValueError):
            V.DESCRIPTION.parse(bad)
    with pytest.raises(ValueError, match=r"^description: "):
        V.check_fields(SecretSettings(description="a\x1b[31m"), V.SECRET_FIELDS)


def test_a_set_that_changes_nothing_is_refused() -> None:
    for settings in (TenantSettings(), SecretSettings(), ClusterSettings(), NodeSettings()):
        with pytest.raises(ValueError, match="^settings: nothing to change"):
            V.require_change(settings)
    V.require_change(TenantSettings(hold_time_days=0))  # 0 and False are changes
    V.require_change(NodeSettings(maintenance=False))


def test_parameter_rules_name_their_field() -> None:
    assert ParameterRule("create", "set", "welcome", "hi").checked() == ParameterRule("CREATE", "SET", "welcome", "hi")
    for rule, field in ((ParameterRule("NOW", "SET", "welcome", "x"), "for"),
                        (ParameterRule("CREATE", "KEEP", "welcome", "x"), "mode"),
                        (ParameterRule("CREATE", "SET", "a b", "x"), "name"),
                        (ParameterRule("JOIN", "BLOCK", "welcome"), "name"),  # not a join parameter
                        (ParameterRule("CREATE", "BLOCK", "welcome", "x"), "value"),
                        (ParameterRule("CREATE", "SET", "welcome"), "value"),
                        (ParameterRule("CREATE", "SET", "guestPolicy", "MAYBE"), "value"),
                        (ParameterRule("CREATE", "SET", "welcome", "v" * 201), "value")):
        with pytest.raises(ValueError, match=f"^{field}: "):
            rule.checked()


def test_tenant_slugs_sub_ids_and_labels() -> None:
    assert V.parse_tenant_slug(" abc ") == "ABC"
    assert V.parse_sub_ids("0-999") == range(1000) and V.parse_sub_ids("7") == range(7, 8)
    assert V.parse_secret_label("abc-001") == ("ABC", 1)
    for bad in ("A", "ABCDEFGHIJK", "AB1", "ÄBC"):
        with pytest.raises(ValueError, match="tenant slug"):
            V.parse_tenant_slug(bad)
    for bad in ("1000", "-1", "5-2", "0-1000", "x"):
        with pytest.raises(ValueError, match="sub-id"):
            V.parse_sub_ids(bad)
    for bad in (range(0), range(0, 1001), range(-1, 3), range(0, 10, 2)):
        with pytest.raises(ValueError, match="sub-id"):
            V.check_sub_ids(bad)


def test_check_fields_names_the_option_and_normalises() -> None:
    with pytest.raises(ValueError, match=r"^cpu-iterations: must be a whole number from 0 to 100"):
        V.check_fields(ClusterSettings(cpu_iterations=1_000_000_000), V.CLUSTER_FIELDS)
    settings = V.check_fields(NodeSettings(domain="BBB.Example.org", port=443, maintenance=True), V.NODE_FIELDS)
    assert settings == NodeSettings(domain="bbb.example.org", port=443, maintenance=True)
    with pytest.raises(ValueError, match=r"^domain: invalid host name"):
        V.check_fields(NodeSettings(domain="a/b?c"), V.NODE_FIELDS)


# The admin operations check what they are given (the admin HTTP API calls them directly) ------


def in_db(url: str, body: Any) -> Any:
    async def go() -> Any:
        conn = await asyncpg.connect(url)
        try:
            return await body(conn)
        finally:
            await conn.close()

    return asyncio.run(go())


async def _rejects(coro: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        await coro


def test_admin_operations_refuse_bad_values_without_writing(db_url: str) -> None:
    async def body(conn: asyncpg.Connection) -> None:
        await admin.cluster_add(conn, "main", ClusterSettings())
        await admin.cluster_group_add(conn, "prod")
        await admin_tenant.tenant_add(conn, "ABC", TenantSettings(cluster_group="prod"))
        await _rejects(admin.cluster_add(conn, "c2", ClusterSettings(cpu_iterations=10**9)), "cpu-iterations")
        await _rejects(admin.cluster_set(conn, "main", ClusterSettings(a_factor=math.nan)), "a-factor")
        await _rejects(admin.cluster_add(conn, "x" * 201, ClusterSettings()), "name")
        await _rejects(admin.cluster_group_add(conn, "a\nb"), "name")
        node = NodeSettings(domain="a/b?c", secret="s", protocol="https", port=443, bbb_endpoint="", load_endpoint="")
        await _rejects(admin.node_add(conn, "main", "n1", node), "domain")
        await _rejects(admin.node_add(conn, "main", "n 1", NodeSettings(domain="x.org", secret="s")), "slug")
        await _rejects(admin.node_add(conn, "main", "n1", NodeSettings(domain="x.org")), "secret: required")
        await _rejects(admin.node_set(conn, "n1", NodeSettings(port=0)), "port")
        await _rejects(admin.node_set(conn, "n1", NodeSettings(bbb_endpoint="../x/")), "bbb-endpoint")
        await _rejects(admin_tenant.tenant_set(conn, "ABC", TenantSettings(meeting_limit=10**8)), "meeting-limit")
        await _rejects(admin_tenant.tenant_add(conn, "A1", TenantSettings(cluster_group="prod")), "tenant slug")
        await _rejects(admin_tenant.secret_add(conn, "ABC", range(998, 1001), SecretSettings()), "sub-id")
        await _rejects(admin_tenant.secret_add(conn, "ABC", range(1), SecretSettings(attendee_limit=-1)), "limit")
        await _rejects(admin_tenant.record_profile_add(conn, "hd", ProfileSettings(width=10_000)), "width")
        await _rejects(admin_tenant.parameter_remove(conn, 0), "id")
        rule = ParameterRule("CREATE", "SET", "welcome", "hi\x00")
        await _rejects(admin_tenant.parameter_add(conn, "ABC", None, rule), "^value: ")
        ok = ParameterRule("CREATE", "BLOCK", "record")
        await _rejects(admin_tenant.parameter_add(conn, "ABC", ("ABC", 0), ok), "^tenant: give exactly one")
        await _rejects(admin_tenant.parameter_add(conn, None, None, ok), "^tenant: give exactly one")
        await _rejects(admin_tenant.secret_add(conn, "ABC", range(1), SecretSettings(description="a\nb")),
                       "^description: ")
        await _rejects(admin_tenant.tenant_set(conn, "ABC", TenantSettings()), "^settings: nothing to change")
        await _rejects(admin_meeting.meeting_where(conn, "m" * 201), "MEETING_ID")
        tables = ("cluster", "node", "secret", "record_profile")
        counts = [await conn.fetchval(f"SELECT count(*) FROM {table}") for table in tables]  # noqa: S608
        assert counts == [1, 0, 0, 0]
        (cluster,) = await conn.fetch("SELECT load_a_factor, load_cpu_series_iteratations FROM cluster")
        assert tuple(cluster) == (1.0, 6)
        (tenant,) = await conn.fetch("SELECT meeting_limit FROM tenant")
        assert tenant["meeting_limit"] == 999999

    in_db(db_url, body)


# The load formula --------------------------------------------------------------------------


def cpu_term_by_loop(cpu_load: float, iterations: int, cpu_maximum: int) -> float:
    """The data model's definition, one multiplication per term (the code before the closed form)."""
    if iterations <= 0:
        return 0.0
    ratio = min(max(cpu_load, 0.0), 100.0) / 100.0
    total, power = 0.0, 1.0
    for _ in range(iterations):
        power *= ratio
        total += power
    return cpu_maximum / iterations * total


@pytest.mark.parametrize("iterations", [0, 1, 2, 6, 7, 10, 33, 100])
def test_cpu_term_equals_the_series(iterations: int) -> None:
    for cpu in (0.0, 1e-9, 0.5, 10.0, 33.3, 50.0, 75.0, 99.0, 99.999, 99.9999999, 100.0, -5.0, 150.0):
        expected = cpu_term_by_loop(cpu, iterations, 5000)
        assert cpu_term(cpu, iterations, 5000) == pytest.approx(expected, rel=1e-12, abs=1e-12), (cpu, iterations)
    assert cpu_term(50.0, 6, 5000) == pytest.approx(5000 / 6 * 0.984375)


def test_cpu_term_is_fast_for_huge_iteration_counts() -> None:
    started = time.perf_counter()
    for _ in range(20):
        cpu_term(73.0, 10_000_000, 5000)
    assert time.perf_counter() - started < 0.05  # the per-term loop took about 0.3 s per call
    # Stored values beyond the bounds count as the bound.
    assert cpu_term(73.0, 1_000_000_000, 5000) == cpu_term(73.0, 100, 5000)
    assert cpu_term(73.0, -3, 5000) == 0.0
    assert cpu_term(100.0, 2**31 - 1, 2**31 - 1) == 1_000_000


def test_load_score_survives_bad_stored_values() -> None:
    def score(**changes: Any) -> float:
        values: dict[str, Any] = dict(
            attendees=10, meetings=2, cpu_load=50.0, maintenance=False, has_errors=False,
            a_factor=1.0, m_factor=10.0, iterations=6, cpu_maximum=5000,
        )
        values.update(changes)
        return load_score(**values)

    assert score() == pytest.approx(10 + 20 + 5000 / 6 * 0.984375)
    assert score(a_factor=math.nan) == pytest.approx(20 + 5000 / 6 * 0.984375)
    assert score(m_factor=math.inf) == pytest.approx(10 + 2 * 1_000_000 + 5000 / 6 * 0.984375)
    assert score(cpu_load=math.nan) == 30.0
    assert all(math.isfinite(score(**bad)) for bad in ({"a_factor": -math.inf}, {"cpu_maximum": -5}))
    assert score(maintenance=True) == -2.0 and score(has_errors=True) == -1.0
