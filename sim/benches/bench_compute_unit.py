"""cocotb bench of :class:`mvu.hdl.compute_unit.ComputeUnit`: random COMPUTEs against ``(a - zero_point) @ W`` in numpy.

Models of the three buffers answer the unit's ports (a read returns a
cycle after its address; the accumulator read sees a write of the same
cycle). The bench plays the load and store units through the tokens: an
instruction that waits for a load token reads activations and a tile that
the bench writes only when the token is taken, so reading them earlier
gives wrong sums; the other instructions read data written at the start.
Instructions accumulate into overlapping accumulator ranges, as the
k-chunks of a matrix product do, or keep the larger value (``maximum``, as
max pooling's taps do).
"""

import random
from dataclasses import dataclass

import cocotb
import numpy as np
from cocotb.triggers import ReadOnly, RisingEdge

from mvu.hdl.compute_unit import ComputeUnit
from mvu.hdl.contract.config import HardwareConfig
from mvu.hdl.contract.isa import Compute
from mvu.hdl.interfaces import INSTRUCTION_BITS
from mvu.sim.benches.runner import pack, start, unpack

CONFIG = HardwareConfig(rows=4, cols=8, act_depth=512, wgt_depth=256, acc_depth=64, mem_bytes=4)
R, C = CONFIG.rows, CONFIG.cols
STATIC_ACTS, STATIC_TILES = 64, 4  # written at the start; fresh entries follow


def component() -> ComputeUnit:
    return ComputeUnit(CONFIG)


@dataclass
class Job:
    """One COMPUTE, the buffer entries the bench writes when it takes its load token, and its first write."""

    compute: Compute
    fills: dict[str, dict[int, int]]
    first_write: int


def wrap32(values: np.ndarray) -> np.ndarray:
    return (values.astype(np.int64) + (1 << 31)) % (1 << 32) - (1 << 31)


def random_jobs(rng: np.random.Generator, count: int):
    """``count`` random COMPUTEs, the buffers' initial contents and the accumulator writes they must make.

    Returns ``(jobs, buffers, writes)``: ``buffers`` maps "act", "wgt" and
    "acc" to lists of entries (ints), ``writes`` lists ``(address, sums)``
    in order.
    """
    act = rng.integers(0, 256, (CONFIG.act_depth, R))
    wgt = rng.integers(-128, 128, (CONFIG.wgt_depth, C))
    acc = rng.integers(-(1 << 31), 1 << 31, (CONFIG.acc_depth, C))
    buffers = {"act": [pack(e, 8) for e in act], "wgt": [pack(e, 8) for e in wgt], "acc": [pack(e, 32) for e in acc]}
    fresh_act, fresh_wgt = STATIC_ACTS, R * STATIC_TILES
    jobs, writes, tile = [], [], None
    for index in range(count):
        entries = int(rng.integers(1, 13))
        preload = index == 0 or rng.random() < 0.5  # the first COMPUTE brings a tile
        wait_load = rng.random() < 0.5
        fills = {"act": {}, "wgt": {}}
        if wait_load:  # fresh entries, which the bench writes when it takes the token
            act_addr, fresh_act = fresh_act, fresh_act + entries
            fills["act"] = {a: buffers["act"][a] for a in range(act_addr, act_addr + entries)}
        else:
            act_addr = int(rng.integers(0, STATIC_ACTS - entries + 1))
        wgt_addr = 0
        if preload and wait_load:
            wgt_addr, fresh_wgt = fresh_wgt, fresh_wgt + R
            fills["wgt"] = {a: buffers["wgt"][a] for a in range(wgt_addr, wgt_addr + R)}
        elif preload:
            wgt_addr = R * int(rng.integers(0, STATIC_TILES))
        if preload:
            tile = wgt[wgt_addr:wgt_addr + R]
        signed = bool(rng.integers(2))
        zero_point = int(rng.integers(-128, 128) if signed else rng.integers(0, 256))
        acc_addr = int(rng.integers(0, CONFIG.acc_depth - entries + 1))
        compute = Compute(act_addr=act_addr, count=entries, acc_addr=acc_addr, wgt_addr=wgt_addr, preload=preload,
                          accumulate=rng.random() < 0.6, maximum=rng.random() < 0.3, act_signed=signed,
                          act_zero_point=zero_point,
                          wait_load=wait_load, wait_store=rng.random() < 0.4, signal_load=rng.random() < 0.4,
                          signal_store=rng.random() < 0.4)
        values = act[act_addr:act_addr + entries]
        values = values.astype(np.int8) if signed else values
        sums = (values.astype(np.int64) - zero_point) @ tile
        jobs.append(Job(compute, fills, len(writes)))
        for i, row in enumerate(sums):
            address = compute.acc_addr + i
            if compute.accumulate:
                acc[address] = np.maximum(acc[address], row) if compute.maximum else wrap32(acc[address] + row)
            else:
                acc[address] = row
            writes.append((address, [int(v) for v in acc[address]]))
    for name, first, width in (("act", STATIC_ACTS, R), ("wgt", R * STATIC_TILES, C)):
        for address in range(first, len(buffers[name])):  # garbage until the bench takes the load token
            buffers[name][address] = pack(rng.integers(0, 256, width), 8)
    return jobs, buffers, writes


@cocotb.test()
async def random_computes(dut):
    """Every accumulator write equals the model's; tokens are taken and given at the right moments.

    Per cycle: ``*_tokens.pop`` only with ``avail``; a COMPUTE takes its store
    token before its first accumulator write and its load token before its
    first entry issues; it gives the load token in the cycle its last entry
    issues and the store token in the cycle its last sum is written.
    """
    rng, np_rng = random.Random(31), np.random.default_rng(31)
    jobs, buffers, expected = random_jobs(np_rng, 60)
    by_flag = {flag: [job for job in jobs if getattr(job.compute, flag)]
               for flag in ("wait_load", "wait_store", "signal_load", "signal_store")}
    events = {flag: 0 for flag in by_flag}
    queue, offer_at, avail = list(jobs), 0, {"prev": 0, "next": 0}
    reads, writes, issued = {"act": 0, "wgt": 0, "acc": 0}, [], 0
    end = lambda job: job.first_write + job.compute.count
    await start(dut, instr_valid=0)
    for cycle in range(20_000):
        await RisingEdge(dut.clk)
        for name, address in reads.items():
            getattr(dut, f"{name}_read_data").value = buffers[name][address]
        offer = bool(queue) and cycle >= offer_at
        dut.instr_valid.value = offer
        dut.instr_payload.value = (int.from_bytes(queue[0].compute.encode(), "little") if offer
                                   else rng.getrandbits(INSTRUCTION_BITS))
        for side in avail:
            avail[side] ^= rng.random() < 0.1  # tokens come and go in runs
            getattr(dut, f"{side}_tokens_avail").value = avail[side]
        await ReadOnly()

        active = int(dut.active.value)
        for side, waits, signals in (("prev", "wait_load", "signal_load"), ("next", "wait_store", "signal_store")):
            if int(getattr(dut, f"{side}_tokens_pop").value):
                assert avail[side], f"cycle {cycle}: {side}_tokens.pop without a token"
                job = by_flag[waits][events[waits]]
                done = issued if side == "prev" else len(writes)
                assert done <= job.first_write, f"cycle {cycle}: {waits} taken after its instruction began"
                if side == "prev":
                    for name, fills in job.fills.items():
                        for address, value in fills.items():
                            buffers[name][address] = value
                events[waits] += 1
            if int(getattr(dut, f"{side}_tokens_push").value):
                job = by_flag[signals][events[signals]]
                done = issued + active if side == "prev" else len(writes) + int(dut.acc_write_en.value)
                assert done == end(job), f"cycle {cycle}: {signals} given after {done} of {end(job)}"
                events[signals] += 1
        issued += active
        if int(dut.acc_write_en.value):
            address, data = int(dut.acc_write_addr.value), int(dut.acc_write_data.value)
            writes.append((address, unpack(data, 32, C, signed=True)))
            buffers["acc"][address] = data  # before the read below: the read port is transparent
        reads = {name: int(getattr(dut, f"{name}_read_addr").value) for name in reads}
        if offer and int(dut.instr_ready.value):
            queue.pop(0)
            offer_at = cycle + 1 + rng.choice([0, 0, rng.randint(1, 20)])
        if not queue and len(writes) == len(expected) and int(dut.idle.value):
            break
    else:
        raise AssertionError(f"the COMPUTEs did not finish: {len(writes)} of {len(expected)} writes")
    first = next((i for i, (a, b) in enumerate(zip(writes, expected)) if a != b), None)
    assert writes == expected, f"accumulator writes differ from write {first} on: {writes[first:first + 2]}, " \
                               f"expected {expected[first:first + 2]}"
    assert events == {flag: len(flagged) for flag, flagged in by_flag.items()}, f"token events {events}"
