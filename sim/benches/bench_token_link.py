"""cocotb bench of :class:`mvu.hdl.token_link.TokenLink` against two counters in Python.

Both units push tokens at random and pop at random while ``avail`` allows;
now and then a run starts and ``clear`` forgets every token.
"""

import random

import cocotb
from cocotb.triggers import ReadOnly, RisingEdge

from mvu.hdl.token_link import TokenLink
from mvu.sim.benches.runner import start


def component() -> TokenLink:
    return TokenLink()


@cocotb.test()
async def random_pushes_and_pops(dut):
    """``avail`` on each side is high exactly while the other side has given tokens not yet taken."""
    rng = random.Random(51)
    given = {"prev": 0, "next": 0}  # tokens each side has given the other and it has not taken
    other = {"prev": "next", "next": "prev"}
    peak = 0
    await start(dut, prev_push=0, prev_pop=0, next_push=0, next_pop=0, clear=0)
    for cycle in range(20_000):
        await RisingEdge(dut.clk)
        avail = {side: given[other[side]] > 0 for side in given}
        push = {side: rng.random() < 0.4 for side in given}
        pop = {side: avail[side] and rng.random() < 0.4 for side in given}  # as a unit pops: only with avail
        clear = rng.random() < 0.002
        for side in given:
            getattr(dut, f"{side}_push").value = push[side]
            getattr(dut, f"{side}_pop").value = pop[side]
        dut.clear.value = clear
        await ReadOnly()
        for side in given:
            got = int(getattr(dut, f"{side}_avail").value)
            assert got == avail[side], f"cycle {cycle}: {side}_avail is {got}, {given[other[side]]} tokens given"
            given[side] += push[side]
            given[other[side]] -= pop[side]
        if clear:
            given = {side: 0 for side in given}
        peak = max(peak, *given.values())
    assert peak > 5, f"at most {peak} tokens were ever outstanding"
