"""The `b3lb` console script against a real PostgreSQL.

Most commands run in-process through `main([...])` (fast); a handful run the real console script
as a subprocess to check exit codes, stderr and the `python -m b3lb.admin.cli` entry point.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from db_support import REPO, execute_sql, fresh_schema

from b3lb.admin.cli import main


def b3lb(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "b3lb.admin.cli", *args],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )


async def _fetch(url: str, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


def fetch(env: dict[str, str], query: str, *args: Any) -> list[asyncpg.Record]:
    return asyncio.run(_fetch(env["DATABASE_URL"], query, *args))


def count(env: dict[str, str], table: str) -> int:
    return fetch(env, f"SELECT count(*) AS n FROM {table}")[0]["n"]  # noqa: S608 - test tables


@pytest.fixture
def bare_db(pg_url: str) -> Iterator[str]:
    """A second, unmigrated schema (cli_env's own schema is already migrated)."""
    with fresh_schema(pg_url) as url:
        yield url


class Cli:
    """Runs main() in-process with the test environment; returns (status, stdout, stderr)."""

    def __init__(self, env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
        self.env = env
        self.capsys = capsys
        for key in ("DATABASE_URL", "B3LB_SERVER_DATA_DIR", "B3LB_CONFIG"):
            monkeypatch.setenv(key, env[key])

    def __call__(self, *args: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        status = main(list(args))
        out, err = self.capsys.readouterr()
        return status, out, err

    def ok(self, *args: str) -> str:
        status, out, err = self(*args)
        assert status == 0, err
        return out

    def json(self, *args: str) -> Any:
        return orjson.loads(self.ok(*args, "--json"))

    def fails(self, status: int, *args: str) -> str:
        code, out, err = self(*args)
        assert code == status, (out, err)
        assert err.startswith("error: ") and err.count("\n") == 1, err
        assert "Traceback" not in err
        return err


@pytest.fixture
def cli(cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> Cli:
    return Cli(cli_env, monkeypatch, capsys)


@pytest.fixture
def setup(cli: Cli) -> Cli:
    """A cluster with one node in group `prod`, and tenant ABC with secrets ABC and ABC-001."""
    cli.ok("cluster", "add", "main")
    cli.ok("clustergroup", "add", "prod")
    cli.ok("clustergroup", "link", "prod", "main")
    cli.ok(
        "node", "add", "--cluster", "main", "--slug", "bbb1", "--domain", "bbb1.example.org", "--secret", "nodesecret"
    )
    cli.ok("tenant", "add", "abc", "--clustergroup", "prod")
    cli.ok("secret", "add", "ABC", "--sub-id", "0-1")
    return cli


# Subprocess: the real console script -------------------------------------------------------


def test_subprocess_help_and_usage_errors(cli_env: dict[str, str]) -> None:
    result = b3lb(cli_env, "--help")
    assert result.returncode == 0 and "tenant" in result.stdout
    result = b3lb(cli_env, "secret", "add", "--help")
    assert result.returncode == 0 and "--sub-id" in result.stdout
    result = b3lb(cli_env, "tenant", "add", "A1", "--clustergroup", "prod")
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "invalid tenant slug" in result.stderr
    result = b3lb(cli_env, "nosuchcommand")
    assert result.returncode == 2 and result.stderr.startswith("error: ")
    result = b3lb(cli_env, "cluster")
    assert result.returncode == 2 and result.stderr.startswith("error: ")


def test_subprocess_round_trip(cli_env: dict[str, str]) -> None:
    assert b3lb(cli_env, "clustergroup", "add", "prod").returncode == 0
    result = b3lb(cli_env, "tenant", "add", "xyz", "--clustergroup", "prod", "--meeting-limit", "5")
    assert result.returncode == 0, result.stderr
    assert "XYZ" in result.stdout and "5" in result.stdout
    result = b3lb(cli_env, "--json", "tenant", "list")
    assert orjson.loads(result.stdout)[0]["slug"] == "XYZ"
    result = b3lb(cli_env, "tenant", "add", "XYZ", "--clustergroup", "prod")
    assert result.returncode == 1
    assert result.stderr == "error: tenant XYZ already exists\n"
    rows = fetch(cli_env, "SELECT slug, meeting_limit, attendee_limit FROM tenant")
    assert [tuple(r) for r in rows] == [("XYZ", 5, 999999)]


def test_subprocess_config_and_database_errors(cli_env: dict[str, str], tmp_path: Path) -> None:
    result = b3lb(cli_env, "--config", str(tmp_path / "missing.conf"), "tenant", "list")
    assert result.returncode == 2 and result.stderr.startswith("error: config: ")
    bad = tmp_path / "bad.conf"
    bad.write_text("[server]\nport = 'x'\n")
    result = b3lb(cli_env, "tenant", "list", "--config", str(bad))
    assert result.returncode == 2 and "server.port" in result.stderr
    env = dict(cli_env, DATABASE_URL="postgresql://nobody@127.0.0.1:1/none")
    result = b3lb(env, "tenant", "list")
    assert result.returncode == 1 and result.stderr.startswith("error: ")
    assert "Traceback" not in result.stderr


def test_unmigrated_schema_is_refused(bare_db: str, cli_env: dict[str, str]) -> None:
    env = dict(cli_env, DATABASE_URL=bare_db)
    result = b3lb(env, "tenant", "list")
    assert result.returncode == 1
    assert result.stderr == "error: database schema is not up to date: run 'b3lb migrate'\n"


def test_migrate_commands(bare_db: str, cli_env: dict[str, str]) -> None:
    env = dict(cli_env, DATABASE_URL=bare_db)
    status = b3lb(env, "migrate", "--status")
    assert status.returncode == 0 and "0001_schema.sql" in status.stdout and "pending" in status.stdout
    first = b3lb(env, "migrate")
    assert first.returncode == 0 and "applied 0001_schema.sql" in first.stdout
    again = b3lb(env, "migrate")
    assert again.returncode == 0 and again.stdout.strip() == "nothing to do"
    rows = orjson.loads(b3lb(env, "migrate", "--status", "--json").stdout)
    assert rows[0]["file"] == "0001_schema.sql" and rows[0]["state"] == "applied"
    assert all(row["applied_at"] for row in rows)


def test_config_example_prints_the_shipped_config(cli: Cli) -> None:
    """In a checkout (editable install) the shipped config is the checkout's own conf/b3lb.conf."""
    assert cli.ok("config-example") == (REPO / "conf" / "b3lb.conf").read_text(encoding="utf-8")


def test_db_url(cli_env: dict[str, str]) -> None:
    result = b3lb(cli_env, "db-url")
    assert result.returncode == 0 and result.stdout.strip() == cli_env["DATABASE_URL"]


# Clusters, groups, nodes -------------------------------------------------------------------


def test_cluster_commands(cli: Cli) -> None:
    rows = cli.json("cluster", "add", "main", "--a-factor", "2", "--sha", "sha512", "--cpu-maximum", "100")
    assert rows[0]["load_a_factor"] == 2.0 and rows[0]["sha_algorithm"] == "SHA512"
    assert rows[0]["load_m_factor"] == 10.0
    cli.ok("cluster", "set", "main", "--m-factor", "3.5")
    (row,) = fetch(cli.env, "SELECT * FROM cluster")
    assert (row["load_a_factor"], row["load_m_factor"], row["load_cpu_maximum"]) == (2.0, 3.5, 100)
    assert "main" in cli.ok("cluster", "list")
    assert "already exists" in cli.fails(1, "cluster", "add", "main")
    assert "SHA256" in cli.fails(2, "cluster", "add", "other", "--sha", "MD5")
    assert "from 0 to 1000000, got '-1'" in cli.fails(2, "cluster", "set", "main", "--a-factor", "-1")
    assert "no cluster" in cli.fails(1, "cluster", "set", "nope", "--a-factor", "1")
    assert count(cli.env, "cluster") == 1


def test_cluster_group_commands(cli: Cli) -> None:
    cli.ok("cluster", "add", "c1")
    cli.ok("cluster", "add", "c2")
    cli.ok("clustergroup", "add", "prod")
    cli.ok("clustergroup", "link", "prod", "c1")
    rows = cli.json("clustergroup", "link", "prod", "c2")
    assert rows == [{"name": "prod", "clusters": "c1, c2", "tenants": 0}]
    assert "already in" in cli.fails(1, "clustergroup", "link", "prod", "c1")
    cli.ok("clustergroup", "unlink", "prod", "c1")
    assert "is not in" in cli.fails(1, "clustergroup", "unlink", "prod", "c1")
    assert "no cluster group" in cli.fails(1, "clustergroup", "link", "nope", "c1")
    assert "already exists" in cli.fails(1, "clustergroup", "add", "prod")
    assert "c2" in cli.ok("clustergroup", "list")
    assert [r["cluster_id"] for r in fetch(cli.env, "SELECT cluster_id FROM cluster_group_relation")] == [
        fetch(cli.env, "SELECT id FROM cluster WHERE name = 'c2'")[0]["id"]
    ]


def test_node_commands(setup: Cli) -> None:
    cli = setup
    (node,) = fetch(cli.env, "SELECT * FROM node")
    assert (node["protocol"], node["port"], node["bbb_endpoint"]) == ("https", 443, "bigbluebutton/api/")
    fetch(cli.env, "UPDATE node SET attendees = 150, meetings = 10, cpu_load = 50")
    (row,) = cli.json("node", "list")
    assert row["state"] == "ok" and row["load"] == pytest.approx(150 + 100 + 5000 / 6 * 0.984375, abs=0.01)
    cli.ok("cluster", "add", "second")
    cli.ok(
        "node",
        "add",
        "--cluster",
        "second",
        "--slug",
        "bbb1",
        "--domain",
        "x.example.org",
        "--secret",
        "s",
        "--protocol",
        "HTTP",
        "--port",
        "8080",
        "--maintenance",
    )
    assert "ambiguous" in cli.fails(1, "node", "set", "bbb1", "--port", "1")
    cli.ok("node", "set", "second/bbb1", "--secret", "new", "--no-maintenance")
    rows = cli.json("node", "list", "--cluster", "second")
    assert [(r["slug"], r["port"], r["state"]) for r in rows] == [("bbb1", 8080, "ok")]
    cli.ok("node", "maintenance", "main/bbb1", "on")
    assert cli.json("node", "list", "--cluster", "main")[0]["state"] == "maintenance"
    assert "already exists" in cli.fails(
        1, "node", "add", "--cluster", "main", "--slug", "bbb2", "--domain", "bbb1.example.org", "--secret", "s"
    )
    assert "port" in cli.fails(2, "node", "set", "main/bbb1", "--port", "70000")
    assert "protocol" in cli.fails(2, "node", "set", "main/bbb1", "--protocol", "ftp")
    assert "no node" in cli.fails(1, "node", "remove", "ghost")
    secrets = fetch(cli.env, "SELECT secret FROM node ORDER BY id")
    assert [r["secret"] for r in secrets] == ["nodesecret", "new"]


def test_node_remove_needs_force_with_meetings(setup: Cli) -> None:
    cli = setup
    fetch(
        cli.env,
        "INSERT INTO meeting (secret_id, meeting_id, node_id) SELECT s.id, 'm1', n.id FROM secret s, node n LIMIT 1",
    )
    assert "--force" in cli.fails(1, "node", "remove", "bbb1")
    assert count(cli.env, "node") == 1
    cli.ok("node", "remove", "bbb1", "--force")
    assert count(cli.env, "node") == 0 and count(cli.env, "meeting") == 0
    assert "still used by" in cli.fails(1, "clustergroup", "remove", "prod")


# Tenants and secrets -----------------------------------------------------------------------


def test_tenant_commands(setup: Cli) -> None:
    cli = setup
    rows = cli.json("tenant", "set", "abc", "--attendee-limit", "10", "--record-by-default")
    assert rows[0]["attendee_limit"] == 10 and rows[0]["record_by_default"] is True
    assert "invalid tenant slug" in cli.fails(2, "tenant", "add", "ABCDEFGHIJK", "--clustergroup", "prod")
    assert "invalid tenant slug" in cli.fails(2, "tenant", "add", "A", "--clustergroup", "prod")
    assert "no cluster group" in cli.fails(1, "tenant", "add", "NEW", "--clustergroup", "nope")
    assert "no tenant" in cli.fails(1, "tenant", "set", "ZZZ", "--meeting-limit", "1")
    assert "from 0 to 10000000" in cli.fails(2, "tenant", "set", "ABC", "--meeting-limit", "-1")
    for command in (("tenant", "set", "ABC"), ("cluster", "set", "main"), ("node", "set", "bbb1")):
        assert "nothing to change" in cli.fails(2, *command)  # refused, not logged as a write
    assert count(cli.env, "tenant") == 1
    assert "ABC" in cli.ok("tenant", "list")


def test_recording_hold_times(setup: Cli) -> None:
    cli = setup
    rows = cli.json("tenant", "set", "ABC", "--hold-time-days", "30")
    assert rows[0]["hold_time_days"] == 30
    assert "from 0 to 36500" in cli.fails(2, "tenant", "set", "ABC", "--hold-time-days", "36501")
    assert "from 0 to 36500" in cli.fails(2, "secret", "add", "ABC", "--sub-id", "7", "--hold-time-days", "-1")
    assert cli.json("tenant", "list")[0]["hold_time_days"] == 30  # the refused values changed nothing
    listed = cli.json("secret", "add", "ABC", "--sub-id", "7", "--hold-time-days", "0")
    assert listed[0]["hold_time_days"] == 0
    assert cli.json("secret", "add", "ABC", "--sub-id", "8")[0]["hold_time_days"] == 14


def test_tenant_show(setup: Cli) -> None:
    cli = setup
    shown = cli.json("tenant", "show", "ABC")
    (token,) = fetch(cli.env, "SELECT stats_token FROM tenant")
    assert shown["stats_token"] == token["stats_token"]
    main_secret, sub_secret = shown["secrets"]
    assert main_secret["label"] == "ABC" and sub_secret["label"] == "ABC-001"
    assert main_secret["host_endpoint"] == "https://abc.localhost/bigbluebutton/api/"
    assert sub_secret["path_endpoint"] == "https://localhost/b3lb/t/abc-001/bbb/api/"
    text = cli.ok("tenant", "show", "abc")
    assert "https://abc-001.localhost/bigbluebutton/api/" in text and sub_secret["secret"] in text


def test_secret_add_and_list(setup: Cli) -> None:
    cli = setup
    rows = cli.json("secret", "add", "ABC", "--sub-id", "5", "--meeting-limit", "3", "--record-by-default", "true",
                    "--description", " Moodle production ")
    assert rows[0]["label"] == "ABC-005" and len(rows[0]["secret"]) == 64
    int(rows[0]["secret"], 16)
    listed = cli.json("secret", "list", "--tenant", "abc")
    assert [r["label"] for r in listed] == ["ABC", "ABC-001", "ABC-005"]
    assert listed[2]["meeting_limit"] == 3 and listed[2]["record_by_default"] is True
    assert [r["description"] for r in listed] == ["", "", "Moodle production"]
    assert len({r["secret"] for r in listed}) == 3
    assert "DESCRIPTION" in cli.ok("secret", "list").splitlines()[0]
    for bad in ("line\nbreak", "x" * 201, "esc\x1b[31m"):
        assert "--description" in cli.fails(2, "secret", "add", "ABC", "--sub-id", "6", "--description", bad)
    assert count(cli.env, "secret") == 3


def test_secret_add_is_all_or_nothing(setup: Cli) -> None:
    cli = setup
    err = cli.fails(1, "secret", "add", "ABC", "--sub-id", "1-3")
    assert "ABC-001" in err
    assert [r["sub_id"] for r in fetch(cli.env, "SELECT sub_id FROM secret ORDER BY sub_id")] == [0, 1]
    assert "from 0 to 999" in cli.fails(2, "secret", "add", "ABC", "--sub-id", "1000")
    assert "greater than" in cli.fails(2, "secret", "add", "ABC", "--sub-id", "5-2")
    assert "sub-id" in cli.fails(2, "secret", "add", "ABC", "--sub-id", "x-y")
    assert "no tenant" in cli.fails(1, "secret", "add", "NOPE", "--sub-id", "1")
    assert "true or false" in cli.fails(2, "secret", "add", "ABC", "--sub-id", "9", "--record-by-default", "maybe")
    assert count(cli.env, "secret") == 2


def test_secret_rotate(setup: Cli) -> None:
    cli = setup
    (before,) = fetch(cli.env, "SELECT secret FROM secret WHERE sub_id = 1")
    new = cli.ok("secret", "rotate", "ABC-001").strip()
    (after,) = fetch(cli.env, "SELECT secret, secret2 FROM secret WHERE sub_id = 1")
    assert after["secret"] == new and after["secret2"] == before["secret"] and len(new) == 64
    rotated = cli.json("secret", "rotate", "abc")
    assert rotated[0]["label"] == "ABC" and rotated[0]["secret2"]
    assert "no secret ABC-007" in cli.fails(1, "secret", "rotate", "ABC-007")
    assert "invalid secret" in cli.fails(2, "secret", "rotate", "ABC-1000")


# Parameters, assets, recording profiles ---------------------------------------------------


def test_parameter_commands(setup: Cli) -> None:
    cli = setup
    rows = cli.json("parameter", "add", "--tenant", "ABC", "--for", "create", "--mode", "set", "welcome", "Hello")
    assert rows[0]["owner"] == "ABC" and rows[0]["value"] == "Hello"
    cli.ok("parameter", "add", "--secret", "ABC-001", "--for", "JOIN", "--mode", "BLOCK", "role")
    listed = cli.json("parameter", "list", "--tenant", "ABC")
    assert [(r["owner"], r["for"], r["mode"], r["name"]) for r in listed] == [
        ("ABC", "CREATE", "SET", "welcome"),
        ("ABC-001", "JOIN", "BLOCK", "role"),
    ]
    assert "already exists" in cli.fails(
        1, "parameter", "add", "--tenant", "ABC", "--for", "CREATE", "--mode", "OVERRIDE", "welcome", "x"
    )
    assert "value: a SET rule needs a value" in cli.fails(2, "parameter", "add", "--tenant", "ABC", "--for", "JOIN",
                                                          "--mode", "SET", "x")
    assert "200" in cli.fails(
        2, "parameter", "add", "--tenant", "ABC", "--for", "JOIN", "--mode", "SET", "x", "v" * 201
    )
    assert "invalid choice" in cli.fails(2, "parameter", "add", "--tenant", "ABC", "--for", "X", "--mode", "SET", "a")
    assert "not allowed" in cli.fails(
        2, "parameter", "add", "--tenant", "ABC", "--secret", "ABC", "--for", "JOIN", "--mode", "BLOCK", "a"
    )
    assert "no secret" in cli.fails(
        1, "parameter", "add", "--secret", "ABC-009", "--for", "JOIN", "--mode", "BLOCK", "firstName"
    )
    # Only parameters of the call may carry rules, and values must fit the parameter.
    assert "not a join parameter" in cli.fails(
        2, "parameter", "add", "--tenant", "ABC", "--for", "JOIN", "--mode", "BLOCK", "welcome"
    )
    assert "not valid for guestPolicy" in cli.fails(
        2, "parameter", "add", "--tenant", "ABC", "--for", "CREATE", "--mode", "SET", "guestPolicy", "MAYBE"
    )
    cli.ok("parameter", "add", "--tenant", "ABC", "--for", "BOTH", "--mode", "OVERRIDE", "logoutURL",
           "https://example.org/bye")
    cli.ok("parameter", "remove", str(cli.json("parameter", "list", "--tenant", "ABC")[-1]["id"]))
    assert count(cli.env, "parameter") == 2
    cli.ok("parameter", "remove", str(listed[0]["id"]))
    assert "no parameter rule" in cli.fails(1, "parameter", "remove", str(listed[0]["id"]))
    assert count(cli.env, "parameter") == 1


def test_asset_commands(setup: Cli, tmp_path: Path) -> None:
    cli = setup
    logo = tmp_path / "logo.png"
    logo.write_bytes(b"\x89PNG fake")
    css = tmp_path / "style.txt"
    css.write_text("body {}")
    cli.ok("asset", "set", "ABC", "logo", str(logo))
    cli.ok("asset", "set", "ABC", "css", str(css))
    listed = cli.json("asset", "list")
    assert [(r["kind"], r["file"], r["mime"], r["size"]) for r in listed] == [
        ("css", "style.txt", "text/css", 7),
        ("logo", "logo.png", "image/png", 9),
    ]
    (row,) = fetch(cli.env, "SELECT logo_data, css_data, slide FROM asset")
    assert row["logo_data"] == b"\x89PNG fake" and row["slide"] == ""
    cli.ok("asset", "clear", "ABC", "logo")
    (row,) = fetch(cli.env, "SELECT logo, logo_data FROM asset")
    assert row["logo"] == "" and row["logo_data"] is None
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    assert "empty" in cli.fails(1, "asset", "set", "ABC", "slide", str(empty))
    assert "cannot read" in cli.fails(1, "asset", "set", "ABC", "slide", str(tmp_path / "missing.pdf"))
    assert "invalid choice" in cli.fails(2, "asset", "set", "ABC", "banner", str(logo))
    assert "no tenant" in cli.fails(1, "asset", "set", "NOPE", "logo", str(logo))
    big = tmp_path / "big.pdf"
    big.write_bytes(b"\0" * (16 * 1024 * 1024 + 1))
    assert "16 MiB" in cli.fails(1, "asset", "set", "ABC", "slide", str(big))
    assert count(cli.env, "asset") == 1


def test_record_profile_commands(cli: Cli) -> None:
    rows = cli.json(
        "recordprofile", "add", "hd", "--width", "1280", "--format", "webm", "--no-annotate", "--webcam-crop"
    )
    assert rows == [
        {
            "name": "hd",
            "width": 1280,
            "height": 1080,
            "webcam_width": 320,
            "webcam_height": 180,
            "webcam_stretch": False,
            "webcam_crop": True,
            "format": "WEBM",
            "annotate": False,
            "backdrop": True,
        }
    ]
    assert "already exists" in cli.fails(1, "recordprofile", "add", "hd")
    assert "invalid choice" in cli.fails(2, "recordprofile", "add", "x", "--format", "AVI")
    assert "from 1 to 8192" in cli.fails(2, "recordprofile", "add", "x", "--height", "0")
    assert "hd" in cli.ok("recordprofile", "list")
    assert count(cli.env, "record_profile") == 1


def test_every_command_has_help(cli: Cli) -> None:
    groups = {
        "cluster": ["add", "list", "set", "remove"],
        "clustergroup": ["add", "list", "link", "unlink", "remove"],
        "node": ["add", "list", "set", "remove", "maintenance"],
        "tenant": ["add", "list", "set", "show", "remove"],
        "secret": ["add", "list", "rotate", "remove"],
        "parameter": ["add", "list", "remove"],
        "asset": ["set", "clear", "list"],
        "recordprofile": ["add", "list", "link", "unlink", "remove"],
    }
    for top in ("serve", "render", "migrate", "db-url", "config-example", *groups):
        assert cli(top, "--help")[0] == 0
    for group, commands in groups.items():
        for command in commands:
            status, out, _ = cli(group, command, "--help")
            assert status == 0 and out.startswith("usage: b3lb"), (group, command)


def test_meeting_commands(setup: Cli) -> None:
    cli = setup
    execute_sql(cli.env["DATABASE_URL"], """
        INSERT INTO meeting (secret_id, meeting_id, meeting_name, node_id, attendees)
        SELECT s.id, 'room-1', 'Room One', n.id, 3 FROM secret s, node n
        WHERE s.sub_id = 0 ORDER BY n.id LIMIT 1
    """)
    rows = cli.json("meeting", "list")
    assert [(r["meeting_id"], r["attendees"], r["secret"]) for r in rows] == [("room-1", 3, "ABC")]
    assert cli.json("meeting", "list", "--tenant", "ABC") == rows
    where = cli.json("meeting", "where", "room-1")
    assert where[0]["node"] == rows[0]["node"] and where[0]["domain"]
    assert "room-1" in cli.ok("meeting", "where", "room-1")
    assert "no meeting" in cli.fails(1, "meeting", "where", "room-2")
    assert "no tenant" in cli.fails(1, "meeting", "list", "--tenant", "XYZ")
    listed = cli.json("node", "list")
    assert all(r["last_good_poll"] == "never" for r in listed)


# Bounds and host names (b3lb/validation.py) ------------------------------------------------


def test_cluster_numbers_are_bounded(cli: Cli) -> None:
    err = cli.fails(2, "cluster", "add", "big", "--cpu-iterations", "1000000000")
    assert err.startswith("error: argument --cpu-iterations: must be a whole number from 0 to 100")
    assert "--cpu-maximum" in cli.fails(2, "cluster", "add", "big", "--cpu-maximum", "1000001")
    assert "--a-factor" in cli.fails(2, "cluster", "add", "big", "--a-factor", "nan")
    assert "--m-factor" in cli.fails(2, "cluster", "add", "big", "--m-factor", "inf")
    assert count(cli.env, "cluster") == 0
    cli.ok("cluster", "add", "edge", "--cpu-iterations", "100", "--cpu-maximum", "1000000", "--a-factor", "1e6")
    assert "--cpu-iterations" in cli.fails(2, "cluster", "set", "edge", "--cpu-iterations", "101")
    (row,) = fetch(cli.env, "SELECT load_cpu_series_iteratations, load_cpu_maximum, load_a_factor FROM cluster")
    assert tuple(row) == (100, 1_000_000, 1e6)


def test_node_domain_must_be_a_host_name(setup: Cli) -> None:
    cli = setup
    add = ("node", "add", "--cluster", "main", "--secret", "s")
    for domain, reason in (
        ("a/b?c", "no path"),
        ("https://bbb2.example.org", "scheme"),
        ("admin:pw@bbb2.example.org", "user name"),
        ("bbb2.example.org:443", "no port"),
        ("bbb2 .example.org", "spaces"),
        ("127.1", "IP address"),
        ("x" * 201, "longer than 200"),
    ):
        err = cli.fails(2, *add, "--slug", "bbb2", "--domain", domain)
        assert err.startswith("error: argument --domain: invalid host name") and reason in err, err
    assert "--domain" in cli.fails(2, "node", "set", "bbb1", "--domain", "a/b?c")
    assert [r["domain"] for r in fetch(cli.env, "SELECT domain FROM node")] == ["bbb1.example.org"]
    cli.ok(*add, "--slug", "bbb2", "--domain", "BBB2.Example.org.")
    cli.ok(*add, "--slug", "bbb3", "--domain", "::1", "--port", "8443")
    cli.ok(*add, "--slug", "bbb4", "--domain", "192.0.2.4")
    rows = fetch(cli.env, "SELECT slug, domain FROM node ORDER BY id")
    assert [tuple(r) for r in rows][1:] == [("bbb2", "bbb2.example.org"), ("bbb3", "[::1]"), ("bbb4", "192.0.2.4")]


def test_node_ports_endpoints_and_secrets_are_checked(setup: Cli) -> None:
    cli = setup
    for option, value, reason in (
        ("--port", "0", "from 1 to 65535"),
        ("--port", "65536", "from 1 to 65535"),
        ("--bbb-endpoint", "https://evil.example.org/api/", "no scheme"),
        ("--bbb-endpoint", "../admin/", "'..'"),
        ("--load-endpoint", "b3lb/load?x=1", "no query"),
        ("--load-endpoint", "b3lb/load#x", "no query"),
        ("--secret", "with space", "spaces"),
        ("--secret", "x" * 201, "200"),
    ):
        err = cli.fails(2, "node", "set", "bbb1", option, value)
        assert err.startswith(f"error: argument {option}: ") and reason in err, err
    cli.ok("node", "set", "bbb1", "--bbb-endpoint", "/bbb/api", "--port", "65535")
    (row,) = fetch(cli.env, "SELECT bbb_endpoint, port, secret FROM node")
    assert tuple(row) == ("bbb/api/", 65535, "nodesecret")


def test_bad_node_defaults_are_a_config_error(cli_env: dict[str, str]) -> None:
    env = dict(cli_env, B3LB_NODE_DEFAULTS_BBB_ENDPOINT="http://x/api")
    result = b3lb(env, "node", "list")
    assert result.returncode == 2
    assert result.stderr.startswith("error: config: node_defaults.bbb_endpoint: invalid path")


def test_limits_sizes_and_ids_are_bounded(setup: Cli) -> None:
    cli = setup
    assert "from 0 to 10000000" in cli.fails(2, "tenant", "set", "ABC", "--attendee-limit", "10000001")
    assert "--meeting-limit" in cli.fails(2, "secret", "add", "ABC", "--sub-id", "5", "--meeting-limit", "2147483648")
    cli.ok("tenant", "set", "ABC", "--attendee-limit", "10000000", "--meeting-limit", "0")
    assert "--width" in cli.fails(2, "recordprofile", "add", "big", "--width", "8193")
    assert "--webcam-height" in cli.fails(2, "recordprofile", "add", "big", "--webcam-height", "-1")
    assert "from 1 to 2147483647" in cli.fails(2, "parameter", "remove", "2147483648")
    assert "control characters" in cli.fails(
        2, "parameter", "add", "--tenant", "ABC", "--for", "CREATE", "--mode", "SET", "welcome", "hi\nthere"
    )
    assert "MEETING_ID" in cli.fails(2, "meeting", "where", "m" * 201)
    assert count(cli.env, "record_profile") == 0 and count(cli.env, "secret") == 2
    (row,) = fetch(cli.env, "SELECT attendee_limit, meeting_limit FROM tenant")
    assert tuple(row) == (10_000_000, 0)


def test_numeric_parameter_values_are_bounded(setup: Cli) -> None:
    add = ("parameter", "add", "--tenant", "ABC", "--for", "CREATE", "--mode", "SET")
    assert "not valid for duration" in setup.fails(2, *add, "duration", "99999999999999999999")
    assert "not valid for maxParticipants" in setup.fails(2, *add, "maxParticipants", "٣")
    setup.ok(*add, "duration", "999999999")
    assert count(setup.env, "parameter") == 1
