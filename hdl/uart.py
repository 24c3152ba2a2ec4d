"""A UART, 8N1: bytes in and out of a serial line, least significant bit first."""

from amaranth import Cat, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

__all__ = ["BYTES", "baud_divisor", "UartRx", "UartTx"]

#: Bytes, one per transfer.
BYTES = stream.Signature(8)


def baud_divisor(clock_hz: float, baud: int) -> int:
    """Clock cycles per bit for ``baud`` at ``clock_hz`` (a HardwareConfig's ``clock_mhz * 1e6``)."""
    divisor = round(clock_hz / baud)
    if divisor < 4:
        raise ValueError(f"{baud} baud needs a clock of at least {4 * baud} Hz, not {clock_hz}")
    return divisor


class UartTx(wiring.Component):
    """Sends each byte of ``data`` on ``tx``: a start bit, eight data bits and a stop bit of ``divisor``
    cycles each; the next byte's start bit can follow the stop bit at once.

    Members:
        data: ``In(BYTES)``: the bytes to send; one is taken whenever the line is idle.
        tx: ``Out(1)``: the line, high when idle.
    """

    data: In(BYTES)
    tx: Out(1, init=1)

    def __init__(self, divisor: int):
        self.divisor = divisor
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        shift = Signal(9)  # the bits after the one on the line, stop bit last
        bits = Signal(range(11))  # bit periods left, the current one included
        timer = Signal(range(self.divisor))
        m.d.comb += self.data.ready.eq((bits == 0) | ((bits == 1) & (timer == 0)))
        with m.If(self.data.valid & self.data.ready):
            m.d.sync += [timer.eq(self.divisor - 1), bits.eq(10),
                         self.tx.eq(0), shift.eq(Cat(self.data.payload, 1))]
        with m.Elif(bits != 0):
            with m.If(timer == 0):
                m.d.sync += [timer.eq(self.divisor - 1), bits.eq(bits - 1),
                             self.tx.eq(shift[0]), shift.eq(Cat(shift[1:], 1))]
            with m.Else():
                m.d.sync += timer.eq(timer - 1)
        return m


class UartRx(wiring.Component):
    """Receives bytes from ``rx``, sampling each bit in its middle, ``divisor`` cycles apart, timed from
    the falling edge of the start bit. A start bit that is gone by its middle was a glitch and is ignored;
    a stop bit that reads low is a framing error: the byte is dropped, and the next start bit is looked for
    once the line has been high again.

    Members:
        rx: ``In(1)``: the line (synchronised here).
        data: ``Out(BYTES)``: the bytes received; a byte not taken before the next one arrives is replaced.
        framing_error: ``Out(1)``: a byte's stop bit read low (one cycle).
    """

    rx: In(1, init=1)
    data: Out(BYTES)
    framing_error: Out(1)

    def __init__(self, divisor: int):
        self.divisor = divisor
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        line = Signal(init=1)
        m.submodules.sync = FFSynchronizer(self.rx, line, init=1)
        shift = Signal(8)
        bit = Signal(range(8))
        timer = Signal(range(self.divisor))

        with m.If(self.data.ready):
            m.d.sync += self.data.valid.eq(0)
        with m.FSM():
            with m.State("IDLE"):
                with m.If(~line):
                    m.d.sync += timer.eq(self.divisor // 2 - 1)
                    m.next = "START"
            with m.State("START"):
                m.d.sync += timer.eq(timer - 1)
                with m.If(timer == 0):
                    m.d.sync += [timer.eq(self.divisor - 1), bit.eq(0)]
                    m.next = "DATA"
                    with m.If(line):
                        m.next = "IDLE"
            with m.State("DATA"):
                m.d.sync += timer.eq(timer - 1)
                with m.If(timer == 0):
                    m.d.sync += [timer.eq(self.divisor - 1), bit.eq(bit + 1), shift.eq(Cat(shift[1:], line))]
                    with m.If(bit == 7):
                        m.next = "STOP"
            with m.State("STOP"):
                m.d.sync += timer.eq(timer - 1)
                with m.If(timer == 0):
                    with m.If(line):
                        m.d.sync += [self.data.payload.eq(shift), self.data.valid.eq(1)]
                        m.next = "IDLE"
                    with m.Else():
                        m.d.comb += self.framing_error.eq(1)
                        m.next = "BREAK"
            with m.State("BREAK"):
                with m.If(line):
                    m.next = "IDLE"
        return m
