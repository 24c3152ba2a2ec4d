import random

import numpy as np
import pytest

from mvu.hdl.contract.config import INSTRUCTION_BYTES
from mvu.hdl.contract.isa import (
    OPCODE_FIELDS,
    Buffer,
    Compute,
    Finish,
    Load,
    Opcode,
    ProgramError,
    Store,
    Sync,
    decode,
    decode_columns,
    decode_program,
    encode_columns,
    encode_program,
)


def random_instruction(rng: random.Random):
    kind = rng.choice([Load, Compute, Store, Sync, Finish])
    if kind is Load:
        return Load(Buffer(rng.randrange(2)), rng.randrange(1 << 16), rng.randrange(1 << 16), rng.randrange(1 << 32),
                    rng.randrange(1 << 32), rng.random() < .5, rng.random() < .5)
    if kind is Compute:
        return Compute(rng.randrange(1 << 16), rng.randrange(1 << 16), rng.randrange(1 << 16), rng.randrange(1 << 16),
                       *(rng.random() < .5 for _ in range(3)), rng.randrange(-32768, 32768),
                       *(rng.random() < .5 for _ in range(5)))
    if kind is Store:
        return Store(rng.randrange(1 << 16), rng.randrange(1 << 16), rng.randrange(1 << 32), rng.randrange(1 << 32),
                     rng.randrange(1 << 32), *(rng.random() < .5 for _ in range(3)),
                     *(rng.randrange(-32768, 32768) for _ in range(3)), rng.random() < .5, rng.random() < .5)
    return kind()


def test_encode_decode_round_trip():
    rng = random.Random(7)
    program = [random_instruction(rng) for _ in range(500)]
    raw = encode_program(program)
    assert len(raw) == 500 * INSTRUCTION_BYTES
    assert decode_program(raw) == program


def test_columns_encode_as_instructions_do():
    rng = random.Random(8)
    program = [random_instruction(rng) for _ in range(500)]
    raw = np.frombuffer(encode_program(program), np.uint8).reshape(-1, INSTRUCTION_BYTES)
    np.testing.assert_array_equal(encode_columns(decode_columns(raw)), raw)
    columns = decode_columns(raw)
    compute = next(i for i, ins in enumerate(program) if isinstance(ins, Compute))
    finish = next(i for i, ins in enumerate(program) if isinstance(ins, Finish))
    columns["count"][finish] = 1 << 16  # FINISH has no count: ignored
    np.testing.assert_array_equal(encode_columns(columns), raw)
    columns["count"][compute] = 1 << 16
    with pytest.raises(ProgramError, match=f"instruction {compute}: COMPUTE field count=65536 does not fit 16 bits"):
        encode_columns(columns)
    with pytest.raises(ProgramError, match="instruction 1: unknown opcode 9"):
        encode_columns({"opcode": np.array([1, 9])})


def test_fields_do_not_overlap():
    for opcode, fields in OPCODE_FIELDS.items():
        used = 0xFF  # opcode and token bits
        for name, field in fields.items():
            mask = ((1 << field.width) - 1) << field.lsb
            assert not used & mask, f"{opcode.name}.{name} overlaps another field"
            assert field.lsb + field.width <= 8 * INSTRUCTION_BYTES
            used |= mask


def test_values_that_do_not_fit_are_refused():
    with pytest.raises(ProgramError, match="COMPUTE field count=65536 does not fit 16 bits"):
        Compute(act_addr=0, count=65536, acc_addr=0).encode()
    with pytest.raises(ProgramError, match="act_zero_point=40000"):
        Compute(act_addr=0, count=1, acc_addr=0, act_zero_point=40000).encode()


def test_malformed_words_are_named():
    with pytest.raises(ProgramError, match="instruction 3: unknown opcode 9"):
        decode((9).to_bytes(INSTRUCTION_BYTES, "little"), 3)
    with pytest.raises(ProgramError, match="instruction 0: unknown opcode 0"):
        decode(bytes(INSTRUCTION_BYTES))
    stray = int.from_bytes(Sync().encode(), "little") | 1 << 200
    with pytest.raises(ProgramError, match=r"instruction 0 \(SYNC\): reserved bits set \(bit 200"):
        decode(stray.to_bytes(INSTRUCTION_BYTES, "little"))
    # A LOAD has no "previous" unit: its pop_prev bit is reserved.
    load = int.from_bytes(Load(Buffer.ACT, 0, 1, 0, 0).encode(), "little") | 1 << 4
    with pytest.raises(ProgramError, match="reserved bits"):
        decode(load.to_bytes(INSTRUCTION_BYTES, "little"))
    with pytest.raises(ProgramError, match="whole number of 32-byte instructions"):
        decode_program(bytes(33))


def test_opcodes_are_stable():
    # The encoding is a published interface (docs/isa.md): changing it breaks programs.
    assert [op.value for op in Opcode] == [1, 2, 3, 4, 5]
    assert Finish().encode()[0] == 5
