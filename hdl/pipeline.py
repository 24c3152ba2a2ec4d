"""Small pipeline helpers shared by the hardware blocks."""

from amaranth import Cat, Module, Signal, Value

from mvu.hdl.contract.isa import COMMON_FIELDS, OPCODE_FIELDS, Opcode

__all__ = ["delayed", "staggered", "instruction_field"]


def delayed(m: Module, value: Value, cycles: int, name: str, *, reset: bool = False) -> Value:
    """``value`` seen through ``cycles`` registers (``cycles == 0`` returns it unchanged).

    The registers have no reset unless ``reset`` is set (control bits need one, data does not),
    which keeps both the netlist and the simulation lean.
    """
    for stage in range(cycles):
        register = Signal.like(value, name=f"{name}_d{stage + 1}", init=0, reset_less=not reset)
        m.d.sync += register.eq(value)
        value = register
    return value


def instruction_field(word: Value, name: str, opcode: Opcode | None = None) -> Value:
    """Slice a field out of an instruction word, using the table in :mod:`mvu.hdl.contract.isa`."""
    field = COMMON_FIELDS[name] if opcode is None else OPCODE_FIELDS[opcode][name]
    bits = word[field.lsb:field.lsb + field.width]
    return bits.as_signed() if field.signed else bits


def staggered(m: Module, lanes: list[Value], name: str) -> list[Value]:
    """Lane ``i`` of ``lanes`` delayed by ``i`` cycles (a triangular skew buffer).

    Stage ``k`` is one register holding the lanes that still need delay, so a
    simulator moves a whole stage per cycle rather than one lane per register.
    """
    widths = [len(lane) for lane in lanes]
    out = [lanes[0]]
    carried = lanes[1:]
    for stage in range(1, len(lanes)):
        register = Signal(sum(widths[stage:]), name=f"{name}_stage{stage}", reset_less=True)
        m.d.sync += register.eq(Cat(*carried))
        offsets = [sum(widths[stage:stage + i]) for i in range(len(lanes) - stage)]
        carried = [register[offset:offset + widths[stage + i]] for i, offset in enumerate(offsets)]
        out.append(carried[0])
        carried = carried[1:]
    return out
