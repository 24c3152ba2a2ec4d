"""Small pipeline helpers shared by the hardware blocks."""

from amaranth import Module, Signal, Value

from mvu.isa import COMMON_FIELDS, OPCODE_FIELDS, Opcode

__all__ = ["delayed", "instruction_field"]


def delayed(m: Module, value: Value, cycles: int, name: str) -> Value:
    """``value`` seen through ``cycles`` registers (``cycles == 0`` returns it unchanged)."""
    for stage in range(cycles):
        register = Signal.like(value, name=f"{name}_d{stage + 1}", init=0)
        m.d.sync += register.eq(value)
        value = register
    return value


def instruction_field(word: Value, name: str, opcode: Opcode | None = None) -> Value:
    """Slice a field out of a 256-bit instruction word, using the table in :mod:`mvu.isa`."""
    field = COMMON_FIELDS[name] if opcode is None else OPCODE_FIELDS[opcode][name]
    bits = word[field.lsb:field.lsb + field.width]
    return bits.as_signed() if field.signed else bits
