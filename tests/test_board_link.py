"""The host link and the `board` executor, end to end over a pseudo-terminal against a board in software:
framing and CRC, odd-sized products and the toy model bit-exact with `reference`, damaged frames
retried, uploads of only what changed, and clear errors for a missing port, a silent board and a
bitstream for another configuration."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from conftest import TINY

from mvu.hdl.contract.config import HardwareConfig
from mvu.hdl.contract.csr_map import COUNTERS
from mvu.hdl.contract.host_link import SYNC, Command
from mvu.host.executors.board import BoardExecutor, written_ranges
from mvu.host.executors.board_model import PtyStream, SoftwareBoard
from mvu.host.executors.link import LinkError, encode_frame, read_frame
from mvu.host.executors.reference import ReferenceExecutor
from mvu.host.gemm import GemmProgram, golden_gemm
from mvu.host.model.package import load_package
from mvu.host.runtime.runner import ModelRunner
from mvu.host.tools.benchmarks import random_gemm_operands


class _Bytes(io.BytesIO):
    def write(self, data):  # appends without moving the read position
        position = self.tell()
        self.seek(0, io.SEEK_END)
        written = super().write(data)
        self.seek(position)
        return written


def test_frames_round_trip_resync_and_fail_their_crc():
    frame = encode_frame(7, Command.WRITE, b"\x01\x02\x03")
    stream = _Bytes(b"noise" + SYNC[:1] + frame + frame[:-1] + bytes([frame[-1] ^ 1]))
    good = read_frame(stream)
    assert (good.sequence, good.command, good.payload) == (7, Command.WRITE, b"\x01\x02\x03")
    assert read_frame(stream).command == 0  # the CRC fails: no command is trusted
    assert read_frame(stream) is None  # nothing more


@pytest.fixture
def board_on_pty():
    """Starts a software board of a configuration on a new pty; yields (port, board)."""
    boards = []

    def start(config: HardwareConfig, **options):
        stream = PtyStream()
        board = SoftwareBoard(config, stream, **{"memory_bytes": 8 << 20, **options}).start()
        boards.append((board, stream))
        return stream.port, board

    yield start
    for board, stream in boards:
        board.stop()
        stream.close()


@pytest.mark.parametrize("m, k, n", [(5, 7, 3), (33, 70, 19)])
def test_odd_products_are_bit_exact_with_reference(board_on_pty, m, k, n):
    port, _ = board_on_pty(TINY)
    executor = BoardExecutor(TINY, port)
    a, w, zero_point, requant = random_gemm_operands(m, k, n, seed=m)
    on_board = GemmProgram(TINY, a, w, act_zero_point=zero_point, requant=requant)
    reference = GemmProgram(TINY, a, w, act_zero_point=zero_point, requant=requant)
    counters = executor.run(on_board.program).counters
    ReferenceExecutor(TINY).run(reference.program)
    np.testing.assert_array_equal(on_board.result(), reference.result())
    assert list(counters) == [name for name, _ in COUNTERS]  # read from the board's counter CSRs


def test_damaged_replies_are_retried_and_writes_run_once(board_on_pty):
    port, board = board_on_pty(TINY, corrupt=lambda n: n % 5 == 3)
    executor = BoardExecutor(TINY, port)
    a, w, zero_point, requant = random_gemm_operands(9, 13, 6, seed=3)
    gemm = GemmProgram(TINY, a, w, act_zero_point=zero_point, requant=requant)
    executor.run(gemm.program)
    np.testing.assert_array_equal(gemm.result(), golden_gemm(a, w, zero_point, requant))
    assert executor.link.resent > 0


def test_only_what_changed_is_uploaded_and_only_stores_are_read(board_on_pty):
    port, _ = board_on_pty(TINY)
    executor = BoardExecutor(TINY, port)
    sent = []
    write = executor.link.write
    executor.link.write = lambda address, data: (sent.append(len(data)), write(address, data))
    a, w, zero_point, requant = random_gemm_operands(40, 64, 24, seed=1)
    gemm = GemmProgram(TINY, a, w, act_zero_point=zero_point, requant=requant)
    executor.run(gemm.program)
    first, sent[:] = sum(sent), []
    gemm.load_activations(np.roll(a, 1, axis=0))
    executor.run(gemm.program)
    assert 0 < sum(sent) < first / 2
    start, stop = written_ranges(TINY, gemm.program)[0]
    assert stop - start >= 40 * 24  # the output matrix


def test_the_toy_model_runs_bit_exact_on_the_board(board_on_pty, toy_package_path):
    config = HardwareConfig()
    port, _ = board_on_pty(config)
    package = load_package(toy_package_path, config)
    image = np.random.default_rng(0).integers(0, 256, (1, *package.model.input_shape[1:]), dtype=np.uint8)
    board = ModelRunner(package.model, config, "board", BoardExecutor(config, port)).run(image)
    reference = ModelRunner(package.model, config, "reference").run(image)
    np.testing.assert_array_equal(board, reference)


@pytest.mark.parametrize("memory_bytes, fits", [(8 << 20, True), (5000, False)])
def test_the_executor_finds_the_boards_memory_and_refuses_programs_beyond_it(board_on_pty, memory_bytes, fits):
    """The board's memory is where its link starts refusing READs; a program larger than it is refused before any
    upload."""
    port, board = board_on_pty(TINY, memory_bytes=memory_bytes)
    executor = BoardExecutor(TINY, port)
    assert executor.memory_bytes == memory_bytes == board.memory.size
    a, w, zero_point, requant = random_gemm_operands(64, 64, 32, seed=4)
    gemm = GemmProgram(TINY, a, w, act_zero_point=zero_point, requant=requant)
    assert (gemm.program.memory.size <= memory_bytes) == fits
    if fits:
        executor.run(gemm.program)
        np.testing.assert_array_equal(gemm.result(), golden_gemm(a, w, zero_point, requant))
        return
    with pytest.raises(LinkError, match=f"needs {gemm.program.memory.size:,} bytes of memory; the board on .* holds "
                                        f"{memory_bytes:,}"):
        executor.run(gemm.program)


def test_a_bitstream_for_another_configuration_is_refused(board_on_pty):
    port, _ = board_on_pty(TINY)
    with pytest.raises(LinkError, match="runs a bitstream for another configuration"):
        BoardExecutor(HardwareConfig(), port)


def test_no_port_and_a_silent_board_are_clear_errors():
    with pytest.raises(LinkError, match="no serial port /dev/ttyNOPE"):
        BoardExecutor(TINY, "/dev/ttyNOPE")
    silent = PtyStream()  # nothing answers on it
    try:
        with pytest.raises(LinkError, match=r"did not answer \(3 tries\): is it powered"):
            BoardExecutor(TINY, silent.port, timeout=0.05, retries=2)
    finally:
        silent.close()


def test_mvu_run_on_the_board(board_on_pty, toy_package_path, cat_jpeg, tmp_path, capsys):
    from mvu.host.tools.cli import main

    port, _ = board_on_pty(HardwareConfig())
    image = tmp_path / "cat.jpg"
    image.write_bytes(cat_jpeg)
    assert main(["run", str(toy_package_path), str(image), "--backend", "board", "--port", port, "--json"]) == 0
    on_board = capsys.readouterr().out
    assert main(["run", str(toy_package_path), str(image), "--backend", "reference", "--json"]) == 0
    reference = capsys.readouterr().out
    assert [p["top"] for p in json.loads(on_board)] == [p["top"] for p in json.loads(reference)]
    with pytest.raises(SystemExit, match="mvu: the board backend needs the board's serial port"):
        main(["run", str(toy_package_path), str(image), "--backend", "board"])
    with pytest.raises(SystemExit, match="mvu: no serial port /dev/ttyNOPE"):
        main(["run", str(toy_package_path), str(image), "--backend", "board", "--port", "/dev/ttyNOPE"])
