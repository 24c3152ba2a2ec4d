"""cocotb bench of :class:`mvu.hdl.uart.UartTx` and :class:`mvu.hdl.uart.UartRx`, both ways at once.

The transmitter gets random bytes after random gaps; its line must be the
exact 8N1 waveform of a Python model, each start bit as early as the
handshake and the previous stop bit allow. The receiver gets random bytes
at bit periods up to 2 % off the divisor, with random idle gaps, glitches
shorter than half a bit, and bytes whose stop bit is low (then a break);
it must deliver the good bytes in order, each framing error once, under
random backpressure.
"""

import random

import cocotb
from amaranth import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out, flipped
from cocotb.triggers import ReadOnly, RisingEdge

from mvu.hdl.uart import BYTES, UartRx, UartTx
from mvu.sim.benches.runner import start

DIVISOR = 13


class Uart(wiring.Component):
    """A transmitter and a receiver side by side; the ports are theirs (``tx_data`` is the transmitter's
    ``data``, ``rx_data`` the receiver's)."""

    tx_data: In(BYTES)
    tx: Out(1)
    rx: In(1, init=1)
    rx_data: Out(BYTES)
    framing_error: Out(1)

    def elaborate(self, platform):
        m = Module()
        m.submodules.transmitter = transmitter = UartTx(DIVISOR)
        m.submodules.receiver = receiver = UartRx(DIVISOR)
        wiring.connect(m, flipped(self.tx_data), transmitter.data)
        wiring.connect(m, receiver.data, flipped(self.rx_data))
        m.d.comb += [self.tx.eq(transmitter.tx), receiver.rx.eq(self.rx), self.framing_error.eq(receiver.framing_error)]
        return m


def component() -> Uart:
    return Uart()


def frame_bits(byte: int, stop: int = 1) -> list[int]:
    """Start bit, data bits least significant first, stop bit."""
    return [0, *((byte >> i) & 1 for i in range(8)), stop]


def rx_stimulus(rng: random.Random, count: int) -> tuple[list[int], list[int], int]:
    """The receiver's line, cycle by cycle; the good bytes on it and the number of framing errors."""
    levels, good, errors = [1] * 20, [], 0
    while len(good) < count:
        byte, period, kind = rng.getrandbits(8), DIVISOR * (1 + rng.uniform(-0.02, 0.02)), rng.random()
        if kind < 0.05:  # a glitch
            levels += [0] * rng.randint(1, DIVISOR // 2 - 2) + [1] * DIVISOR
        elif kind < 0.12:  # a framing error, a break, and at least a bit's time of idle line
            bits = frame_bits(byte, stop=0)
            levels += [bits[min(int(c / period), 9)] for c in range(round(10 * period))]
            levels += [0] * rng.randint(0, 3 * DIVISOR) + [1] * DIVISOR
            errors += 1
        else:
            bits = frame_bits(byte)
            levels += [bits[min(int(c / period), 9)] for c in range(round(10 * period))]
            good.append(byte)
        levels += [1] * rng.choice((0, 0, rng.randint(1, 3 * DIVISOR)))
    return levels + [1] * 2 * DIVISOR, good, errors


@cocotb.test()
async def both_ways(dut):
    """300 bytes each way: the transmitter's waveform and the receiver's bytes and errors match the models."""
    rng = random.Random(29)
    rx_levels, rx_expected, rx_errors = rx_stimulus(rng, 300)
    tx_bytes = [rng.getrandbits(8) for _ in range(300)]
    tx_line, tx_starts, offered = [], [], None  # line per cycle; (cycle, byte) of each start; cycle of the offer
    received, errors, gap, transferred = [], 0, 0, False
    await start(dut, tx_data_valid=0, rx=1, rx_data_ready=0)
    cycle = 0
    while cycle < len(rx_levels) or tx_bytes or len(tx_line) < tx_starts[-1][0] + 11 * DIVISOR:
        await RisingEdge(dut.clk)
        if offered is not None and transferred:
            tx_starts.append((cycle, tx_bytes.pop(0)))
            assert cycle == max(offered + 1, tx_starts[-2][0] + 10 * DIVISOR if len(tx_starts) > 1 else 0), \
                f"cycle {cycle}: the byte offered in cycle {offered} started late"
            offered, gap = None, rng.choice((0, 0, rng.randint(1, 30 * DIVISOR)))
        if offered is None and tx_bytes and gap == 0:
            offered = cycle
        gap = max(gap - 1, 0)
        dut.tx_data_valid.value = offered is not None
        dut.tx_data_payload.value = tx_bytes[0] if offered is not None else rng.getrandbits(8)
        dut.rx.value = rx_levels[cycle] if cycle < len(rx_levels) else 1
        dut.rx_data_ready.value = rng.random() < 0.5
        await ReadOnly()
        tx_line.append(int(dut.tx.value))
        transferred = int(dut.tx_data_valid.value) and int(dut.tx_data_ready.value)
        if int(dut.rx_data_valid.value) and int(dut.rx_data_ready.value):
            received.append(int(dut.rx_data_payload.value))
        errors += int(dut.framing_error.value)
        cycle += 1

    expected_line = [1] * len(tx_line)
    for begin, byte in tx_starts:
        for k, bit in enumerate(frame_bits(byte)):
            expected_line[begin + k * DIVISOR:begin + (k + 1) * DIVISOR] = [bit] * DIVISOR
    mismatch = next((c for c, (a, b) in enumerate(zip(tx_line, expected_line)) if a != b), None)
    assert mismatch is None, f"cycle {mismatch}: tx is {tx_line[mismatch]}, the model's line {expected_line[mismatch]}"
    wrong = next((i for i, (a, b) in enumerate(zip(received, rx_expected)) if a != b), None)
    assert received == rx_expected, f"received {len(received)} of {len(rx_expected)} bytes, the first wrong: {wrong}"
    assert errors == rx_errors, f"{errors} framing errors, {rx_errors} sent"
