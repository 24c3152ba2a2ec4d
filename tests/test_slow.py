"""Long runs, in `make test-slow`: a large product on the RTL and synthesis for an FPGA."""

import pytest

from mvu.hdl.contract.config import HardwareConfig

pytestmark = pytest.mark.slow


def test_large_gemm_is_bit_exact_and_keeps_the_array_busy(verilator_executors):
    from mvu.host.tools.benchmarks import bench_gemm

    config = HardwareConfig()
    report = bench_gemm(config, 1024, 1024, 1024, executor=verilator_executors(config), seed=5)
    assert report["bit_exact"]
    assert report["mac_utilization"] >= 0.85, report
    assert report["memory_bandwidth_used"] <= 1.0


def test_ecp5_synthesis_of_the_default_configuration():
    from mvu.hdl.synthesis import synthesize

    config = HardwareConfig()
    report = synthesize(config, target="ecp5")
    cells = report["cells"]
    # Every cell multiplies on a DSP; the buffers are block RAM (DP16KD), not flip-flops.
    assert cells.get("MULT18X18D", 0) >= config.macs_per_cycle
    assert cells.get("DP16KD", 0) >= 8
    assert cells.get("TRELLIS_FF", 0) > 0
