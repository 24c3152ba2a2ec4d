"""The RTL, run by Verilator, against the reference: bit for bit, plus its error paths."""

import json

import numpy as np
import pytest
from conftest import NARROW, TINY

from mvu.hdl.contract.config import HardwareConfig
from mvu.hdl.contract.csr_map import Csr
from mvu.hdl.contract.isa import Buffer, Compute, Finish, Load, Sync
from mvu.hdl.contract.program import MemoryImage, Program
from mvu.hdl.contract.requantization import Requantization
from mvu.host.executors.reference import ReferenceExecutor
from mvu.host.gemm import GemmProgram, GemmTiling, golden_gemm
from mvu.sim.verilator_executor import MemoryModel, SimulationError, SimulationTimeout


def gemm_case(rng, m, k, n, signed, output="fixed"):
    """Operands and a requantization: ``output`` is "fixed" (point), "float32" (scales) or "raw"."""
    a = rng.integers(-128, 128, (m, k), dtype=np.int8) if signed else rng.integers(0, 256, (m, k), dtype=np.uint8)
    w = rng.integers(-128, 128, (k, n), dtype=np.int8)
    zero_point = int(rng.integers(-128, 128) if signed else rng.integers(0, 256))
    make = {"fixed": Requantization.from_scales, "float32": Requantization.from_float32_scales}.get(output)
    requant = None if make is None else make(rng.uniform(1e-4, 1e-2, n), rng.integers(-5000, 5000, n),
                                             out_zero_point=int(rng.integers(-10, 10)))
    return a, w, zero_point, requant


@pytest.mark.parametrize("config", [TINY, NARROW], ids=["tiny", "narrow"])
def test_random_awkward_gemms_are_bit_exact(config, verilator_executors):
    executor = verilator_executors(config)
    rng = np.random.default_rng(2024)
    for trial in range(12):
        m, k, n = (int(x) for x in rng.integers(1, 60, 3))
        signed, output = bool(trial % 2), ("raw", "fixed", "float32")[trial % 3]
        a, w, zero_point, requant = gemm_case(rng, m, k, n, signed, output)
        gemm = GemmProgram(config, a, w, act_zero_point=zero_point, requant=requant)
        run = executor.run(gemm.program)
        np.testing.assert_array_equal(gemm.result(), golden_gemm(a, w, zero_point, requant),
                                      err_msg=f"{m}x{k}x{n} signed={signed} {output}")
        assert run.counters["array_active"] * config.macs_per_cycle >= m * k * n


@pytest.mark.parametrize("config", [TINY, NARROW], ids=["tiny", "narrow"])
def test_gemms_with_an_output_table_are_bit_exact(config, verilator_executors):
    """STOREs that load a table and look their bytes up in it: the RTL, the reference and the definition agree."""
    executor = verilator_executors(config)
    rng = np.random.default_rng(16)
    for trial, (m, k, n) in enumerate([(37, 21, 11), (5, 3, 40), (70, 9, 2)]):
        a, w, zero_point, requant = gemm_case(rng, m, k, n, bool(trial % 2), ("fixed", "float32")[trial % 2])
        table = rng.integers(0, 256, 256, dtype=np.uint8)
        gemm = GemmProgram(config, a, w, act_zero_point=zero_point, requant=requant, table=table)
        reference = GemmProgram(config, a, w, act_zero_point=zero_point, requant=requant, table=table)
        executor.run(gemm.program)
        ReferenceExecutor(config).run(reference.program)
        np.testing.assert_array_equal(gemm.program.memory.data, reference.program.memory.data)
        np.testing.assert_array_equal(gemm.result(), golden_gemm(a, w, zero_point, requant, table))


@pytest.mark.parametrize("k_chunk", [1, 2, 4], ids=["four chunks", "two", "one"])
def test_weights_kept_across_blocks_are_bit_exact(k_chunk, verilator_executors):
    """Blocks that use the weight tiles a half of the weight buffer still holds (no weight LOAD): the RTL writes
    the reference's bytes."""
    rng = np.random.default_rng(30 + k_chunk)
    a, w, zero_point, requant = gemm_case(rng, 29, 15, 7, False, "float32")
    gemms = [GemmProgram(TINY, a, w, act_zero_point=zero_point, requant=requant, tiling=GemmTiling(4, 1, k_chunk))
             for _ in range(2)]
    verilator_executors(TINY).run(gemms[0].program)
    ReferenceExecutor(TINY).run(gemms[1].program)
    np.testing.assert_array_equal(gemms[0].program.memory.data, gemms[1].program.memory.data)
    np.testing.assert_array_equal(gemms[0].result(), golden_gemm(a, w, zero_point, requant))


@pytest.mark.parametrize("model", [MemoryModel(latency=1, bytes_per_cycle=4), MemoryModel(latency=97, bytes_per_cycle=1.5,
                                                                                            max_outstanding=3)],
                         ids=["fast", "slow-and-narrow"])
def test_results_do_not_depend_on_memory_timing(model, verilator_executors):
    executor = verilator_executors(TINY, model)
    rng = np.random.default_rng(8)
    a, w, zero_point, requant = gemm_case(rng, 45, 23, 14, False, "float32")
    gemm = GemmProgram(TINY, a, w, act_zero_point=zero_point, requant=requant)
    executor.run(gemm.program)
    np.testing.assert_array_equal(gemm.result(), golden_gemm(a, w, zero_point, requant))


def test_default_configuration_gemm(verilator_executors):
    config = HardwareConfig()
    executor = verilator_executors(config)
    rng = np.random.default_rng(99)
    a, w, zero_point, requant = gemm_case(rng, 300, 700, 500, False)
    gemm = GemmProgram(config, a, w, act_zero_point=zero_point, requant=requant)
    run = executor.run(gemm.program)
    np.testing.assert_array_equal(gemm.result(), golden_gemm(a, w, zero_point, requant))
    counters = run.counters
    assert counters["array_active"] == sum(ins.count for ins in gemm.program.instructions()
                                           if isinstance(ins, Compute))
    assert counters["cycles"] >= counters["array_active"]
    assert counters["mem_write_beats"] == 300 * 16  # 16 column tiles of 32 bytes per output row


def test_default_configuration_output_table(verilator_executors):
    """32 lanes, 32-byte beats: the table arrives in 8 beats and each lane picks its byte out of a 32-byte word."""
    config = HardwareConfig()
    rng = np.random.default_rng(32)
    a, w, zero_point, requant = gemm_case(rng, 70, 100, 45, True, "float32")
    table = rng.permutation(256).astype(np.uint8)
    gemm = GemmProgram(config, a, w, act_zero_point=zero_point, requant=requant, table=table)
    verilator_executors(config).run(gemm.program)
    np.testing.assert_array_equal(gemm.result(), golden_gemm(a, w, zero_point, requant, table))


def small_program(instructions, memory_bytes=4096):
    memory = MemoryImage()
    memory.allocate(memory_bytes)
    return Program.place(memory, instructions)


def test_illegal_instruction_stops_the_core(verilator_executors):
    executor = verilator_executors(TINY)
    program = small_program([Sync(), Finish()])
    program.memory.data[program.address] = 9  # opcode 9 does not exist
    with pytest.raises(SimulationError, match="ILLEGAL_OPCODE at instruction 0"):
        executor.run(program, check=False)
    program.memory.data[program.address] = 4
    program.memory.data[program.address + 32] = 4  # SYNC instead of FINISH
    with pytest.raises(SimulationError, match="NO_FINISH at instruction 2"):
        executor.run(program, check=False)
    executor.run(small_program([Sync(), Finish()]))  # and it still works afterwards


def test_memory_access_out_of_range(verilator_executors):
    executor = verilator_executors(TINY)
    program = small_program([Load(Buffer.ACT, 0, 4, 1 << 20, 4), Finish()])
    with pytest.raises(SimulationError, match="memory read at 0x100000 outside the"):
        executor.run(program, check=False)


def test_hung_program_hits_the_cycle_limit(verilator_executors):
    executor = verilator_executors(TINY)
    # Waits for a token nobody sends: the static check would refuse it, the hardware hangs.
    program = small_program([Compute(act_addr=0, count=1, acc_addr=0, wait_load=True), Finish()])
    with pytest.raises(SimulationTimeout, match="did not finish within 5000 cycles"):
        executor.run(program, max_cycles=5000, check=False)
    executor.run(small_program([Finish()]))


def test_csr_identity(verilator_executors):
    executor = verilator_executors(NARROW)
    assert executor._lib.mvu_sim_csr_read(executor._handle, Csr.CONFIG_FINGERPRINT) == NARROW.fingerprint


@pytest.mark.parametrize("seed", [0, 1])
def test_bench_command_of_the_acceptance_criteria(seed, capsys):
    """`mvu bench gemm --m 300 --k 700 --n 500 --backend verilator --json` on the default configuration."""
    from mvu.host.tools.cli import main

    assert main(["bench", "gemm", "--m", "300", "--k", "700", "--n", "500", "--backend", "verilator", "--json",
                 "--seed", str(seed)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["bit_exact"] is True
    for key in ("cycles", "mac_utilization", "sim_seconds", "sim_cycles_per_second", "sim_macs_per_second"):
        assert report[key] > 0, key
    assert report["mac_utilization"] <= 1
    assert report["mac_utilization"] == pytest.approx(300 * 700 * 500 / (report["cycles"] * 1024))


def test_bench_cli_rejects_a_bad_configuration_file(tmp_path):
    from mvu.host.tools.cli import main

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**TINY.to_dict(), "rows": 6}))
    with pytest.raises(SystemExit, match="rows must be a power of two, not 6"):
        main(["--config", str(bad), "bench", "gemm", "--backend", "reference"])
