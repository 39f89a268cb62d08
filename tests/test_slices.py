"""b3lb/slices.py: background work runs one slice per loop turn, whoever does it, and a cancelled
waiter never keeps the right from the others."""

from __future__ import annotations

import asyncio
import time

import pytest

from b3lb.slices import Slices


class TurnCounter:
    """Counts loop turns: a callback that schedules itself again runs once per turn."""

    def __init__(self) -> None:
        self.turn = 0
        self._stopped = False
        asyncio.get_running_loop().call_soon(self._tick)

    def _tick(self) -> None:
        if not self._stopped:
            self.turn += 1
            asyncio.get_running_loop().call_soon(self._tick)

    def stop(self) -> None:
        self._stopped = True


def busy(seconds: float) -> None:
    until = time.perf_counter() + seconds
    while time.perf_counter() < until:
        pass


def test_workers_that_pause_run_one_slice_per_loop_turn() -> None:
    """Eight workers, each with work for several slices: never two slices in one turn, and the API's
    callbacks (the turn counter) run between every two of them."""

    async def scenario() -> tuple[list[tuple[int, str]], int]:
        slices, turns = Slices(seconds=0.001), TurnCounter()
        ran: list[tuple[int, str]] = []  # (turn, worker) of every slice

        async def worker(name: str) -> None:
            async with slices.held() as held:
                for _ in range(5):
                    ran.append((turns.turn, name))
                    busy(0.0012)
                    await held.tick()

        await asyncio.gather(*(worker(f"w{n}") for n in range(8)))
        turns.stop()
        return ran, slices.handovers

    ran, handovers = asyncio.run(scenario())
    assert len(ran) == 40
    by_turn = [turn for turn, _ in ran]
    assert len(set(by_turn)) == 40, f"two slices shared a loop turn: {by_turn}"
    # first come, first served: the first worker keeps going until the others queue up, then each gets its turn
    assert {name for _, name in ran[:9]} == {f"w{n}" for n in range(8)}
    assert handovers >= 32


def test_plain_yielding_lets_a_turn_run_many_slices() -> None:
    """What the module fixes: workers that only `sleep(0)` all run in the same turn."""

    async def scenario() -> list[int]:
        turns, ran = TurnCounter(), []

        async def worker() -> None:
            for _ in range(3):
                ran.append(turns.turn)
                await asyncio.sleep(0)

        await asyncio.gather(*(worker() for _ in range(8)))
        turns.stop()
        return ran

    ran = asyncio.run(scenario())
    assert len(set(ran)) < len(ran) / 4


def test_a_lone_holder_keeps_the_right_across_pauses() -> None:
    async def scenario() -> tuple[int, bool]:
        slices = Slices(seconds=0.0)
        async with slices.held() as held:
            for _ in range(10):
                await held.tick()  # due at once: pauses, nobody to hand over to
        async with slices.held():  # free again: taken at once
            pass
        return slices.handovers, slices._busy

    handovers, busy_after = asyncio.run(scenario())
    assert handovers == 0 and busy_after is False


@pytest.mark.parametrize("cancel_when", ["waiting", "handed-over"])
def test_a_cancelled_waiter_does_not_keep_the_right(cancel_when: str) -> None:
    async def scenario() -> list[str]:
        slices, order = Slices(seconds=0.0), []
        first_in = asyncio.Event()
        tasks: dict[str, asyncio.Task[None]] = {}

        async def first() -> None:
            async with slices.held() as held:
                order.append("first")
                first_in.set()
                await asyncio.sleep(0.01)  # long enough for the others to queue up
                if cancel_when == "handed-over":  # lands after the hand-over, before doomed's turn
                    asyncio.get_running_loop().call_soon(tasks["doomed"].cancel)
                await held.pause()  # hands over to `doomed`
                order.append("first again")

        async def doomed() -> None:
            async with slices.held():
                order.append("doomed")  # never: cancelled before its slice runs

        async def last() -> None:
            async with slices.held():
                order.append("last")

        one = asyncio.create_task(first())
        await first_in.wait()
        victim = tasks["doomed"] = asyncio.create_task(doomed())
        await asyncio.sleep(0)
        other = asyncio.create_task(last())
        await asyncio.sleep(0)
        if cancel_when == "waiting":
            victim.cancel()
        await asyncio.wait_for(asyncio.gather(one, other), 2.0)
        with pytest.raises(asyncio.CancelledError):
            await victim
        assert slices._busy is False and not slices._waiting
        return order

    order = asyncio.run(scenario())
    assert "doomed" not in order
    assert order[0] == "first" and set(order[1:]) == {"first again", "last"}


def test_a_holder_pausing_while_its_only_waiter_is_being_cancelled_goes_on() -> None:
    """The waiter is cancelled in the same turn in which the holder pauses, before its cleanup ran:
    its future is still queued, so a hand-over would go to nobody and the holder would wait forever."""

    async def scenario() -> list[int]:
        slices, progress = Slices(seconds=0.0), []

        async def holder() -> None:
            async with slices.held() as held:
                for step in range(5):
                    await held.pause()
                    progress.append(step)

        async def waiter() -> None:
            async with slices.held():
                pass

        first = asyncio.create_task(holder())
        await asyncio.sleep(0)  # the holder has the right
        second = asyncio.create_task(waiter())
        await asyncio.sleep(0)  # the waiter queued up
        second.cancel()  # lands in the turn in which the holder pauses
        await asyncio.wait_for(first, 2.0)
        assert second.cancelled() and slices._busy is False and not slices._waiting
        return progress

    assert asyncio.run(scenario()) == [0, 1, 2, 3, 4]
