"""Small pipeline helpers shared by the hardware blocks."""

from collections.abc import Callable

from amaranth import Cat, ClockDomain, ClockSignal, Module, ResetSignal, Signal, Value

from mvu.hdl.contract.isa import COMMON_FIELDS, OPCODE_FIELDS, Opcode

__all__ = ["delayed", "staggered", "instruction_field", "idle_gated_domain", "GATE_IDLE_PIPELINES"]

#: Set on the ``platform`` a design is elaborated for to have :func:`idle_gated_domain` gate clocks
#: (the Verilator model only: :func:`mvu.hdl.verilog.generate_verilog` with ``simulation``).
GATE_IDLE_PIPELINES = "gate_idle_pipelines"


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


def idle_gated_domain(m: Module, platform, active: Callable[[], Value], name: str) -> str:
    """The clock domain for a pipeline whose registers change only in cycles that end with ``active()`` high.

    For hardware that is ``sync`` itself. For a platform with :data:`GATE_IDLE_PIPELINES` set (the
    Verilator model) it is a domain ``name`` whose clock is ``sync``'s, gated by ``active`` (or ``sync``'s
    reset) as it stood at the clock's falling edge: a cycle-based simulator then skips the pipeline's
    logic, not only its register loads, while nothing is in flight. The registers see the same edges
    whenever they would change, so the behaviour is the same. ``active`` builds the condition (only then)
    from registers alone: no combinational path from the design's inputs, which change between the edges.
    """
    if not getattr(platform, GATE_IDLE_PIPELINES, False):
        return "sync"
    fall = ClockDomain(f"{name}_fall", clk_edge="neg", reset_less=True, local=True)
    gated = ClockDomain(name, local=True)
    m.domains += [fall, gated]
    enable = Signal(name=f"{name}_enable")
    m.d[f"{name}_fall"] += enable.eq(active() | ResetSignal("sync"))
    m.d.comb += [fall.clk.eq(ClockSignal("sync")), gated.clk.eq(ClockSignal("sync") & enable),
                 gated.rst.eq(ResetSignal("sync"))]
    return name
