"""Shared fixtures: small hardware configurations and executors built once per session."""

import pytest

from mvu.config import HardwareConfig

#: Small enough to build in seconds, odd enough to catch tiling bugs.
TINY = HardwareConfig(rows=4, cols=4, act_depth=64, wgt_depth=32, acc_depth=64, mem_bytes=4)
#: Rows and columns differ, entries span several beats.
NARROW = HardwareConfig(rows=8, cols=16, act_depth=128, wgt_depth=64, acc_depth=128, mem_bytes=4)


@pytest.fixture(scope="session")
def tiny_config() -> HardwareConfig:
    return TINY


@pytest.fixture(scope="session")
def verilator_executors():
    """Verilator executors by configuration, built (or loaded from the cache) once."""
    from mvu.sim.verilator_executor import VerilatorExecutor

    cache = {}

    def get(config: HardwareConfig, memory_model=None):
        key = (config, memory_model)
        if key not in cache:
            cache[key] = VerilatorExecutor(config, memory_model) if memory_model else VerilatorExecutor(config)
        return cache[key]

    return get
