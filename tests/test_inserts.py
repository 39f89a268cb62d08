"""Routing records of concurrent creates written together (b3lb/inserts.py), on a real PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import asyncpg
import pytest

from b3lb.inserts import InsertArgs, MeetingInserts
from b3lb.testing.harness import Harness


class CountingInserts(MeetingInserts):
    """Counts the statements written (the real ones: it only wraps the method that sends them)."""

    def __init__(self, pool: asyncpg.Pool, **kwargs: int) -> None:
        super().__init__(pool, **kwargs)
        self.statements: list[int] = []

    async def _insert_rows(self, rows: Sequence[InsertArgs]) -> list[asyncpg.Record]:
        self.statements.append(len(rows))
        return await super()._insert_rows(rows)


def ids(h: Harness) -> tuple[int, int]:
    return h.tenants["ABC"].secrets[0][0], next(iter(h.runtime.loads.nodes))


async def started_alone(inserts: CountingInserts, args: InsertArgs) -> asyncio.Future[asyncpg.Record | None]:
    """An insert whose statement has been sent (a few loop iterations at most) before anything else."""
    first = asyncio.ensure_future(inserts.insert(args))
    for _ in range(100):
        if inserts.statements:
            return first
        await asyncio.sleep(0)
    raise AssertionError("the first insert never went out")


@pytest.mark.gen_test(timeout=30)
async def test_concurrent_inserts_share_statements_and_each_gets_its_row(db_url):
    async with Harness(db_url, nodes=1) as h:
        secret_id, node_id = ids(h)
        inserts = CountingInserts(h.pool, max_in_flight=1)
        first = await started_alone(inserts, (secret_id, "m-0", "Room 0", node_id, "", ""))
        rest = await asyncio.gather(*(inserts.insert((secret_id, f"m-{n}", f"Room {n}", node_id, "", ""))
                                      for n in range(1, 20)))
        rows = [await first, *rest]
        assert [r["meeting_id"] for r in rows] == [f"m-{n}" for n in range(20)]
        assert len({r["id"] for r in rows}) == 20 and all(r["node_id"] == node_id for r in rows)
        # the first went alone, the 19 that came while it ran went together
        assert inserts.statements == [1, 19]
        assert await h.pool.fetchval("SELECT count(*) FROM meeting WHERE meeting_name LIKE 'Room %'") == 20


@pytest.mark.gen_test(timeout=30)
async def test_inserts_arriving_together_share_one_statement(db_url):
    """Nothing in flight: still one statement for the creates of one loop iteration, not one each."""
    async with Harness(db_url, nodes=1) as h:
        secret_id, node_id = ids(h)
        inserts = CountingInserts(h.pool, max_in_flight=2)
        rows = await asyncio.gather(*(inserts.insert((secret_id, f"t-{n}", "Room", node_id, "", ""))
                                      for n in range(12)))
        assert [r["meeting_id"] for r in rows] == [f"t-{n}" for n in range(12)]
        assert inserts.statements == [12]
        # one alone is not held back: it goes out as soon as the loop has run what was ready
        assert (await inserts.insert((secret_id, "alone", "Room", node_id, "", "")))["meeting_id"] == "alone"
        assert inserts.statements == [12, 1]


@pytest.mark.gen_test(timeout=30)
async def test_existing_and_duplicate_meetings_get_no_row(db_url):
    async with Harness(db_url, nodes=1) as h:
        secret_id, node_id = ids(h)
        inserts = CountingInserts(h.pool, max_in_flight=1)
        first = await inserts.insert((secret_id, "dup", "Room", node_id, "", ""))
        assert first is not None
        assert await inserts.insert((secret_id, "dup", "Room again", node_id, "", "")) is None
        # two creates of one new meeting in one batch: the first gets the row, the second nothing
        rows = await asyncio.gather(*(inserts.insert((secret_id, "twin", f"Twin {n}", node_id, "", ""))
                                      for n in range(2)))
        assert inserts.statements[-1] == 2
        assert rows[0] is not None and rows[0]["meeting_id"] == "twin" and rows[1] is None
        assert await h.pool.fetchval("SELECT meeting_name FROM meeting WHERE meeting_id = 'twin'") == "Twin 0"


@pytest.mark.gen_test(timeout=30)
async def test_a_bad_row_fails_alone(db_url):
    async with Harness(db_url, nodes=1) as h:
        secret_id, node_id = ids(h)
        inserts = CountingInserts(h.pool, max_in_flight=1)
        good = [inserts.insert((secret_id, f"ok-{n}", "Room", node_id, "", "")) for n in range(3)]
        bad = inserts.insert((999_999, "orphan", "Room", node_id, "", ""))  # no such secret
        results = await asyncio.gather(*good, bad, return_exceptions=True)
        assert [r["meeting_id"] for r in results[:3]] == ["ok-0", "ok-1", "ok-2"]
        assert isinstance(results[3], asyncpg.ForeignKeyViolationError)
        assert inserts.statements == [4, 1, 1, 1, 1]  # the batch failed, then row by row
        assert await h.pool.fetchval("SELECT count(*) FROM meeting WHERE meeting_id LIKE 'ok-%'") == 3


@pytest.mark.gen_test(timeout=30)
async def test_an_unreachable_database_fails_every_waiting_create(db_url):
    async with Harness(db_url, nodes=1) as h:
        secret_id, node_id = ids(h)
        pool = await asyncpg.create_pool(db_url, min_size=1, max_size=1)
        await pool.close()  # closed: every statement fails at once
        inserts = MeetingInserts(pool, max_in_flight=1)
        results = await asyncio.gather(*(inserts.insert((secret_id, f"x-{n}", "Room", node_id, "", ""))
                                         for n in range(3)), return_exceptions=True)
        assert all(isinstance(r, asyncpg.InterfaceError) for r in results), results
        assert await h.pool.fetchval("SELECT count(*) FROM meeting WHERE meeting_id LIKE 'x-%'") == 0
