"""Malformed programs get a ProgramError that names the instruction and the problem."""

import numpy as np
import pytest
from conftest import TINY

from mvu.hdl.contract.isa import Buffer, Compute, Finish, Load, ProgramError, Store, Sync
from mvu.hdl.contract.program import MemoryImage, Program, check_program
from mvu.hdl.contract.requantization import requantization_block
from mvu.host.executors.reference import ReferenceExecutor


def placed(instructions, *, memory_bytes=4096, params=None):
    memory = MemoryImage()
    memory.allocate(memory_bytes)
    if params is not None:
        memory.data[1024:1024 + params.size] = params
    return Program.place(memory, instructions)


def good_params():
    return requantization_block(TINY, [0] * 4, [1 << 30] * 4, [31] * 4)


@pytest.mark.parametrize("instructions, message", [
    ([Load(Buffer.ACT, 60, 8, 0, 4), Finish()], "instruction 0 (LOAD): ACT buffer entries 60..67 exceed the buffer (64 entries)"),
    ([Load(Buffer.WGT, 0, 1, 6, 4), Finish()], "source address 0x6 and stride 4 must be multiples of the 4-byte memory beat"),
    ([Load(Buffer.ACT, 0, 4, 8192, 4), Finish()], "lie outside memory"),
    ([Load(Buffer.ACT, 0, 0, 0, 4), Finish()], "ACT buffer count must be at least 1"),
    ([Compute(act_addr=0, count=4, acc_addr=62), Finish()], "accumulator entries 62..65 exceed the buffer (64 entries)"),
    ([Compute(act_addr=0, count=1, acc_addr=0, wgt_addr=30), Finish()], "weight entries 30..33 exceed the buffer"),
    ([Compute(act_addr=0, count=1, acc_addr=0, act_zero_point=300), Finish()], "uint8 activation zero point 300"),
    ([Compute(act_addr=0, count=1, acc_addr=0, act_signed=True, act_zero_point=200), Finish()], "int8 activation zero point 200"),
    ([Store(acc_addr=0, count=1, dram_addr=0, dram_stride=4), Finish()], "requantizes before any STORE of the program loaded parameters"),
    ([Store(acc_addr=0, count=1, dram_addr=0, dram_stride=16, raw=True, clamp_min=5, clamp_max=4), Finish()], "clamp_min 5 exceeds clamp_max 4"),
    ([Compute(act_addr=0, count=1, acc_addr=0, wait_load=True), Finish()], "waits for a load to compute token that no earlier instruction signals: the program would deadlock"),
    ([Store(acc_addr=0, count=1, dram_addr=0, dram_stride=16, raw=True, wait_compute=True), Finish()], "compute to store token"),
    ([Store(acc_addr=0, count=1, dram_addr=0, dram_stride=16, raw=True, table_addr=0, load_table=True,
            lookup=True), Finish()], "a raw STORE cannot look them up"),
    ([Store(acc_addr=0, count=1, dram_addr=0, dram_stride=16, raw=True),
      Store(acc_addr=0, count=1, dram_addr=0, dram_stride=4, param_addr=1024, load_params=True, lookup=True),
      Finish()], "instruction 1 (STORE): looks up bytes before any STORE of the program loaded a table"),
    ([Store(acc_addr=0, count=1, dram_addr=0, dram_stride=16, raw=True, table_addr=8160, load_table=True),
      Finish()], "lookup table bytes 0x1fe0..0x20df lie outside memory"),
    ([Sync()], "end without FINISH"),
    ([Finish(), Sync()], "instruction 1 (SYNC): follows FINISH"),
])
def test_malformed_programs(instructions, message):
    program = placed(instructions)
    with pytest.raises(ProgramError) as error:
        ReferenceExecutor(TINY).run(program)
    assert message in str(error.value)


def test_requantization_parameters_are_checked_in_memory():
    bad_shift = requantization_block(TINY, [0] * 4, [1] * 4, [64] * 4)
    program = placed([Store(acc_addr=0, count=1, dram_addr=0, dram_stride=4, param_addr=1024, load_params=True),
                      Finish()], params=bad_shift)
    with pytest.raises(ProgramError, match="parameter block at 0x400 has a shift outside 0..63"):
        check_program(TINY, program.memory, program.address, program.length)
    ok = placed([Store(acc_addr=0, count=1, dram_addr=0, dram_stride=4, param_addr=1024, load_params=True),
                 Finish()], params=good_params())
    assert len(check_program(TINY, ok.memory, ok.address, ok.length)["opcode"]) == 2


def test_program_placement_errors():
    memory = MemoryImage()
    memory.allocate(64)
    with pytest.raises(ProgramError, match="runs past the end of memory"):
        check_program(TINY, memory, 32, 4)
    with pytest.raises(ProgramError, match="not 32-byte aligned"):
        check_program(TINY, memory, 8, 1)
    with pytest.raises(ProgramError, match="unknown opcode 0"):
        check_program(TINY, np.zeros(64, np.uint8), 0, 1)


def _add_program(add, *, count=1, raw=False, load_params=True):
    """A STORE with ``add`` whose parameter block (and the add block after it) lies at 1024."""
    from mvu.hdl.contract.residual_add import ResidualAdd

    block = np.concatenate([good_params(), ResidualAdd(*add).block() if isinstance(add, tuple) else add])
    loaded = [] if load_params else [Store(acc_addr=0, count=1, dram_addr=0, dram_stride=4, param_addr=1024,
                                           load_params=True)]
    return placed([*loaded, Store(acc_addr=0, count=count, dram_addr=0, dram_stride=4, param_addr=1024,
                                  load_params=load_params, raw=raw, add=True), Finish()], params=block)


@pytest.mark.parametrize("add, options, message", [
    ((1, 1, 0, 0, False, 0, 255, 2048), {"raw": True}, "add needs requantized bytes"),
    ((1, 1, 0, 0, False, 0, 255, 2048), {"load_params": False}, "add needs requantized bytes"),
    ((1, 1, 0, 0, False, 0, 255, 1 << 20), {"count": 2}, "addend rows 0x100000..0x100007 (offset 1048576)"),
    ((1, 1, 0, 0, False, 0, 255, 2050), {}, "must be 4-byte aligned"),
])
def test_residual_adds_are_checked(add, options, message):
    program = _add_program(add, **options)
    with pytest.raises(ProgramError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_program(TINY, program.memory, program.address, program.length)


def test_add_blocks_are_checked_in_memory():
    from mvu.hdl.contract.residual_add import ResidualAdd

    block = ResidualAdd(1, 1, 0, 0).block()
    block[28] = 70  # the shift
    program = _add_program(block)
    with pytest.raises(ProgramError, match="add block at 0x430: the add's shift 70"):
        check_program(TINY, program.memory, program.address, program.length)
    good = _add_program((1, 1, 0, 0, False, 0, 255, 2048), count=3)
    assert good.length == 2 and check_program(TINY, good.memory, good.address, good.length)["add"][0] == 1
