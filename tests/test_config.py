import pytest

from mvu.hdl.contract.config import HardwareConfig


def test_default_configuration_is_valid_and_describes_itself():
    config = HardwareConfig()
    assert config.macs_per_cycle == config.rows * config.cols
    assert "32x32" in config.describe()


@pytest.mark.parametrize("changes, message", [
    ({"rows": 12}, "rows must be a power of two, not 12"),
    ({"cols": 3}, "cols must be a power of two, not 3"),
    ({"cols": 1}, "between 2x2 and 256x256, not 32x1"),
    ({"rows": 512}, "between 2x2 and 256x256"),
    ({"mem_bytes": 64}, "mem_bytes must be one of (4, 8, 16, 32), not 64"),
    ({"rows": 4, "cols": 4, "mem_bytes": 8}, "must be multiples of mem_bytes (8)"),
    ({"wgt_depth": 32}, "wgt_depth (32) must hold at least two weight tiles (64 entries)"),
    ({"act_depth": 2 ** 17}, "act_depth must be between 2 and 65536 entries"),
    ({"clock_mhz": 0}, "clock_mhz must be a positive number"),
    ({"rows": 4.0}, "rows must be an integer"),
])
def test_bad_configurations_are_rejected_with_exact_messages(changes, message):
    with pytest.raises((ValueError, TypeError)) as error:
        HardwareConfig(**changes)
    assert message in str(error.value)


def test_round_trip_and_fingerprint():
    config = HardwareConfig(rows=8, cols=16, mem_bytes=8)
    again = HardwareConfig.from_dict(config.to_dict())
    assert again == config and again.fingerprint == config.fingerprint
    assert HardwareConfig().fingerprint != config.fingerprint
    with pytest.raises(ValueError, match="unknown hardware configuration keys: banks"):
        HardwareConfig.from_dict({**config.to_dict(), "banks": 3})
