"""Boards' memories in the simulator (sim/board_memory.py) and the clock their cycles are timed at
(host/tools/board_performance.py)."""

import dataclasses
import json

import pytest

from mvu.hdl import board_build
from mvu.hdl.board_build import BOARDS, _build_key
from mvu.hdl.contract.config import preset
from mvu.hdl.sdram_controller import SdramTiming
from mvu.host.tools import board_performance
from mvu.host.tools.benchmarks import bench_gemm
from mvu.host.tools.board_performance import board_clock, simulated_memory
from mvu.host.tools.cli import main
from mvu.sim.board_memory import BOARD_MEMORIES, board_memory_model

ULX3S = preset("ulx3s-85f")

#: The controller's bench, ulx3s variant (8-byte beats, 50 MHz, CAS 2, read_delay -1; docs/boards.md,
#: "Measured"): sequential 16-beat reads, first beat 7.1 cycles after the request is taken, 1.967 bytes/cycle.
MEASURED_FIRST_BEAT, MEASURED_BYTES_PER_CYCLE = 7.1, 1.967


def test_ulx3s_sdram_model_reproduces_the_controllers_bench():
    model = board_memory_model("ulx3s-sdram", ULX3S, 50.0)
    assert abs(model.latency - MEASURED_FIRST_BEAT) < 0.5
    assert abs(model.bytes_per_cycle - MEASURED_BYTES_PER_CYCLE) / MEASURED_BYTES_PER_CYCLE < 0.01
    assert model.max_outstanding == 2  # a one-beat job every 4 cycles, answered 7 cycles after


def test_sdram_model_follows_the_controllers_timing():
    ulx3s = BOARD_MEMORIES["ulx3s-sdram"]
    slower = dataclasses.replace(ulx3s, timing=SdramTiming(cas_latency=3, t_rfc=200.0))
    fast, slow = ulx3s.memory_model(8, 50.0), slower.memory_model(8, 50.0)
    assert slow.latency == fast.latency + 1
    assert slow.bytes_per_cycle < fast.bytes_per_cycle < 2
    assert ulx3s.memory_model(32, 50.0).latency == fast.latency + 12  # 16 words a beat instead of 4
    with pytest.raises(ValueError, match="no board memory 'dram'; board memories: ulx3s-sdram"):
        board_memory_model("dram", ULX3S, 50.0)


def test_board_memory_costs_cycles_and_keeps_results_bit_exact(verilator_executors):
    """The SDRAM's bandwidth, against the same latency with a beat per cycle, on a product bound by its weight
    loads: more cycles, the same results, and the SDRAM's bandwidth nearly all used."""
    sdram = board_memory_model("ulx3s-sdram", ULX3S, ULX3S.clock_mhz)
    wide = dataclasses.replace(sdram, bytes_per_cycle=float(ULX3S.mem_bytes))
    reports = {name: bench_gemm(ULX3S, 4, 256, 64, seed=3, executor=verilator_executors(ULX3S, model))
               for name, model in (("sdram", sdram), ("wide", wide))}
    assert all(report["bit_exact"] for report in reports.values())
    assert reports["sdram"]["memory_model"]["bytes_per_cycle"] == sdram.bytes_per_cycle
    assert reports["sdram"]["cycles"] > 1.2 * reports["wide"]["cycles"]
    assert reports["sdram"]["memory_bandwidth_used"] > 0.9 > 0.5 > reports["wide"]["memory_bandwidth_used"]


def test_cycles_are_timed_at_the_cached_builds_fmax(tmp_path, monkeypatch):
    monkeypatch.setattr(board_build, "cache_dir", lambda: tmp_path)
    clock = board_clock("ulx3s", ULX3S)
    assert clock.mhz == ULX3S.clock_mhz and "no cached ulx3s build" in clock.source
    folder = tmp_path / "bitstreams" / f"ulx3s-{_build_key(BOARDS['ulx3s'], ULX3S)}"
    folder.mkdir(parents=True)
    fmax = {"clk": {"achieved": 57.5, "constraint": 50.0}, "link": {"achieved": 61.0, "constraint": 50.0}}
    (folder / "build.json").write_text(json.dumps({"bitstream": str(folder / "top.bit"), "fmax": fmax}))
    clock = board_clock("ulx3s", ULX3S)
    assert clock.mhz == 57.5 and str(folder) in clock.source
    memory = simulated_memory("auto", ULX3S)
    assert memory.name == "ulx3s-sdram" and memory.model == board_memory_model("ulx3s-sdram", ULX3S, 57.5)
    assert simulated_memory("auto", preset("default")).model is None


def test_bench_network_on_a_boards_preset_simulates_its_memory(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(board_performance, "cached_build", lambda board, config: None)  # the preset's clock
    output = tmp_path / "toy.json"
    assert main(["--config", "ulx3s-85f", "bench", "network", "toy", "--backends", "reference,verilator",
                 "--output", str(output)]) == 0
    report = json.loads(output.read_text())
    assert report["memory"]["name"] == "ulx3s-sdram" and report["memory"]["clock_mhz"] == ULX3S.clock_mhz
    sdram = board_memory_model("ulx3s-sdram", ULX3S, ULX3S.clock_mhz)
    assert report["memory"]["model"]["bytes_per_cycle"] == sdram.bytes_per_cycle
    verilator = report["backends"]["verilator"]
    assert verilator["modelled_ms"] == pytest.approx(verilator["cycles"] / (ULX3S.clock_mhz * 1e3))
    # The preset has no float32 post-processor: its global pool stays on the host (the flatten after it is a view).
    assert verilator["host_layers"] == report["backends"]["reference"]["host_layers"] == {"gap": 1}
    shown = capsys.readouterr().out
    assert f"memory ulx3s-sdram ({sdram.latency} cycles latency, {sdram.bytes_per_cycle:.3f} B/cycle" in shown
    assert "the configuration's clock_mhz" in shown
