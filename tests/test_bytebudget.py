"""b3lb/bytebudget.py: tasks hold at most `limit` bytes together, one task always gets through."""

from __future__ import annotations

import asyncio

import pytest
from api_helpers import create_ok

from b3lb.bytebudget import ByteBudget
from b3lb.testing.harness import Harness


def run(coro):  # noqa: ANN001, ANN201
    return asyncio.run(coro)


def test_tasks_share_the_limit_first_come_first_served() -> None:
    async def scenario() -> list[str]:
        budget, order = ByteBudget(100), []
        gates = {name: asyncio.Event() for name in "abcd"}

        async def hold(name: str, size: int) -> None:
            async with budget.take(size):
                order.append(f"{name}+")
                assert budget.used <= 100 or budget.used == size
                await gates[name].wait()
            order.append(f"{name}-")

        tasks = [asyncio.create_task(hold(n, s)) for n, s in (("a", 60), ("b", 50), ("c", 10), ("d", 40))]
        await asyncio.sleep(0.01)
        assert order == ["a+"] and budget.used == 60  # b does not fit, and c waits behind b
        gates["a"].set()
        await asyncio.sleep(0.01)
        assert order == ["a+", "a-", "b+", "c+", "d+"] and budget.used == 100
        for gate in gates.values():
            gate.set()
        await asyncio.gather(*tasks)
        assert budget.used == 0 and budget.peak == 100
        return order

    run(scenario())


def test_an_oversized_task_goes_alone_and_nothing_waits_forever() -> None:
    async def scenario() -> None:
        budget = ByteBudget(10)
        async with budget.take(1000):
            assert budget.used == 1000
            waiter = asyncio.create_task(_take(budget, 5))
            await asyncio.sleep(0.01)
            assert not waiter.done()
        await asyncio.wait_for(waiter, 1)
        assert budget.used == 0

    run(scenario())


async def _take(budget: ByteBudget, size: int) -> None:
    async with budget.take(size):
        await asyncio.sleep(0)


def test_a_cancelled_waiter_takes_nothing_and_lets_the_next_in() -> None:
    async def scenario() -> None:
        budget = ByteBudget(10)
        release = asyncio.Event()

        async def first() -> None:
            async with budget.take(8):
                await release.wait()

        holder = asyncio.create_task(first())
        await asyncio.sleep(0)
        big = asyncio.create_task(_take(budget, 9))  # waits
        small = asyncio.create_task(_take(budget, 2))  # waits behind big (fits, but in order)
        await asyncio.sleep(0.01)
        assert not small.done()
        big.cancel()
        await asyncio.sleep(0.01)
        assert small.done() and budget.used == 8  # let in once big left the queue
        release.set()
        await holder
        assert budget.used == 0 and not budget._waiting

    run(scenario())


@pytest.mark.gen_test(timeout=30)
async def test_a_cycle_keeps_node_answers_in_flight_within_the_budget(db_url: str) -> None:
    async with Harness(db_url, nodes=6) as h:
        for number in range(24):
            await create_ok(h, f"room-{number}")
        await h.poll()  # learns each node's answer size
        poller = h.runtime.poller
        sizes = sorted(poller._answer_sizes.values())
        assert len(sizes) == 6 and sizes[0] > 500
        poller.answer_budget = ByteBudget(sizes[-1] * 2)  # room for two answers at a time
        results = await h.poll()
        assert all(result.ok for result in results) and len(results) == 6
        assert sizes[-1] <= poller.answer_budget.peak <= sizes[-1] * 2
        assert poller.answer_budget.used == 0
