"""`b3lb token ...`, `b3lb secret set` and the audit row of every CLI write, against a real PostgreSQL
(the CLI runs in-process through main(), as in tests/test_cli.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import orjson
import pytest
from test_cli import Cli, b3lb, count, fetch

from b3lb.admin import audit, tokens


@pytest.fixture
def cli(cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> Cli:
    cli = Cli(cli_env, monkeypatch, capsys)
    cli.ok("cluster", "add", "main")
    cli.ok("clustergroup", "add", "prod")
    cli.ok("clustergroup", "link", "prod", "main")
    cli.ok("tenant", "add", "abc", "--clustergroup", "prod")
    cli.ok("secret", "add", "ABC", "--sub-id", "0-1")
    return cli


def authenticate(cli: Cli, token: str) -> tokens.Principal | None:
    async def go() -> tokens.Principal | None:
        conn = await asyncpg.connect(cli.env["DATABASE_URL"])
        try:
            return await tokens.authenticate(conn, token)
        finally:
            await conn.close()

    return asyncio.run(go())


def audit_rows(cli: Cli) -> list[dict[str, Any]]:
    rows = fetch(cli.env, "SELECT actor, tenant, action, target, detail::text AS detail FROM admin_audit ORDER BY id")
    return [dict(r) | {"detail": orjson.loads(r["detail"])} for r in rows]


def test_token_add_prints_the_token_once(cli: Cli) -> None:
    status, out, err = cli("token", "add", "ops", "--scope", "write", "--days", "30")
    assert status == 0, err
    token = out.strip()
    assert token.startswith("b3lb_") and out.count("\n") == 1
    assert "shown this once" in err and "cannot be shown again" in err and token not in err
    assert authenticate(cli, token) == tokens.Principal("ops", "write", None, None)
    stored = fetch(cli.env, "SELECT token_hash, expires_at FROM admin_token WHERE name = 'ops'")[0]
    assert stored["token_hash"] == tokens.token_hash(token) and stored["expires_at"] is not None
    (row,) = cli.json("token", "add", "abc-ro", "--scope", "read", "--tenant", "abc")
    assert row["tenant"] == "ABC" and authenticate(cli, row["token"]).tenant == "ABC"
    listed = cli.json("token", "list")
    assert [(t["name"], t["state"]) for t in listed] == [("abc-ro", "active"), ("ops", "active")]
    assert token not in cli.ok("token", "list") and row["token"] not in str(listed)
    assert "exists already" in cli.fails(1, "token", "add", "ops", "--scope", "read")
    assert "invalid choice" in cli.fails(2, "token", "add", "x", "--scope", "root")
    assert "spaces" in cli.fails(2, "token", "add", "a b", "--scope", "read")
    assert "letters, digits" in cli.fails(2, "token", "add", "a/b", "--scope", "read")
    assert "no tenant" in cli.fails(1, "token", "add", "x", "--scope", "read", "--tenant", "NOPE")
    assert "from 1 to" in cli.fails(2, "token", "add", "x", "--scope", "read", "--days", "0")
    assert count(cli.env, "admin_token") == 2


def test_token_expire_and_revoke(cli: Cli) -> None:
    token = cli.ok("token", "add", "ops", "--scope", "admin").strip()
    cli.ok("token", "add", "ci", "--scope", "read")
    (row,) = cli.json("token", "expire", "ci", "--days", "3")
    assert row["state"] == "active"
    (row,) = cli.json("token", "expire", "ops")
    assert row["state"] == "expired" and authenticate(cli, token) is None
    (row,) = cli.json("token", "revoke", "ci")
    assert row["state"] == "revoked"
    assert "no usable token" in cli.fails(1, "token", "revoke", "ci")
    assert "no usable token" in cli.fails(1, "token", "expire", "nobody")
    assert "from 0 to" in cli.fails(2, "token", "expire", "ops", "--days", "-1")


def test_secret_set(cli: Cli) -> None:
    (row,) = cli.json("secret", "set", "ABC-001", "--attendee-limit", "5", "--meeting-limit", "2",
                      "--recording", "on", "--hold-days", "3")
    assert (row["label"], row["attendee_limit"], row["meeting_limit"], row["record_by_default"],
            row["hold_time_days"]) == ("ABC-001", 5, 2, True, 3)
    (row,) = cli.json("secret", "set", "abc-1", "--attendee-limit", "inherit", "--recording", "inherit")
    assert (row["attendee_limit"], row["meeting_limit"], row["record_by_default"]) == (None, 2, None)
    (row,) = cli.json("secret", "set", "ABC", "--record-by-default", "off", "--hold-time-days", "0")
    assert (row["record_by_default"], row["hold_time_days"]) == (False, 0)
    (row,) = cli.json("secret", "set", "ABC", "--description", "inherit")  # a description, not a keyword
    assert (row["description"], row["record_by_default"]) == ("inherit", False)
    (row,) = cli.json("secret", "set", "ABC", "--description", "")
    assert row["description"] == ""
    before = fetch(cli.env, "SELECT * FROM secret ORDER BY id")
    assert "nothing to change" in cli.fails(2, "secret", "set", "ABC-001")
    assert "from 0 to" in cli.fails(2, "secret", "set", "ABC-001", "--attendee-limit", "-1")
    assert "on, off or inherit" in cli.fails(2, "secret", "set", "ABC-001", "--recording", "maybe")
    assert "from 0 to" in cli.fails(2, "secret", "set", "ABC-001", "--hold-days", "inherit")
    assert "no secret ABC-009" in cli.fails(1, "secret", "set", "ABC-009", "--meeting-limit", "1")
    assert "no tenant" in cli.fails(1, "secret", "set", "XYZ", "--meeting-limit", "1")
    for bad in ("two\nlines", "x" * 201, "bell\x07"):
        assert "--description" in cli.fails(2, "secret", "set", "ABC-001", "--description", bad)
    assert fetch(cli.env, "SELECT * FROM secret ORDER BY id") == before
    assert cli("secret", "set", "--help")[0] == 0 and cli("token", "add", "--help")[0] == 0


def test_cli_writes_are_audited_as_the_cli_user(cli: Cli) -> None:
    actor = audit.cli_actor()
    token = cli.ok("token", "add", "ops", "--scope", "write").strip()
    cli.ok("secret", "set", "ABC-001", "--meeting-limit", "4")
    cli.ok("node", "add", "--cluster", "main", "--slug", "bbb1", "--domain", "bbb1.example.org",
           "--secret", "node-secret-value")
    cli.ok("tenant", "list")  # reads are not logged
    cli.fails(1, "tenant", "add", "abc", "--clustergroup", "prod")  # failed writes neither
    cli.ok("cluster", "maintenance", "main", "on")  # logs itself (b3lb/admin/lifecycle.py): once
    rows = audit_rows(cli)
    assert {r["actor"] for r in rows} == {actor}
    assert [(r["action"], r["target"], r["tenant"]) for r in rows] == [
        ("cluster.add", "main", None), ("clustergroup.add", "prod", None), ("clustergroup.link", "prod/main", None),
        ("tenant.add", "ABC", "ABC"), ("secret.add", "ABC", "ABC"), ("token.add", "ops", None),
        ("secret.set", "ABC-001", "ABC"), ("node.add", "main/bbb1", None), ("cluster.maintenance", "main", None)]
    assert token not in str(rows) and "node-secret-value" not in str(rows)
    assert rows[4]["detail"]["sub_id"] == "0-1" and rows[6]["detail"]["meeting_limit"] == 4


def test_subprocess_token_add(cli_env: dict[str, str]) -> None:
    result = b3lb(cli_env, "token", "add", "ops", "--scope", "admin")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("b3lb_") and "warning:" in result.stderr
    result = b3lb(cli_env, "token", "add", "ops", "--scope", "admin")
    assert result.returncode == 1 and result.stderr.startswith("error: ") and "Traceback" not in result.stderr
