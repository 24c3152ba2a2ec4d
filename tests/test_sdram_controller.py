"""The SDRAM controller's parameters: timing in cycles, burst length, mode register, refused settings.

Its behaviour is benched in sim/benches/bench_sdram_controller.py (tests/test_benches.py)."""

import pytest

from mvu.hdl.sdram_controller import SdramController, SdramGeometry, SdramTiming, burst_words, mode_register


def test_cycles_round_each_rule_up():
    at_50, at_133 = SdramTiming().cycles(50e6), SdramTiming(cas_latency=3).cycles(133e6)
    assert (at_50.rp, at_50.rcd, at_50.ras, at_50.rc, at_50.rfc, at_50.wr, at_50.init) == (2, 2, 3, 4, 4, 2, 10_000)
    assert (at_133.rp, at_133.rcd, at_133.ras, at_133.rc, at_133.rrd, at_133.rfc) == (3, 3, 6, 9, 2, 9)
    assert at_133.cas_latency == 3
    # The refresh falls due early enough to close the banks within tREFI (7.8125 us = 390 cycles at 50 MHz).
    assert at_50.refresh + at_50.rc + at_50.rp + at_50.wr < 390


@pytest.mark.parametrize(("beat", "burst"), [(2, 1), (4, 2), (6, 1), (8, 4), (12, 2), (16, 8), (32, 8), (48, 8)])
def test_burst_is_the_largest_that_divides_the_beat(beat, burst):
    assert burst_words(beat) == burst


def test_mode_register():
    assert mode_register(4, 2) == 0b010_0_010
    assert mode_register(8, 3) == 0b011_0_011
    assert mode_register(1, 3) == 0b011_0_000


@pytest.mark.parametrize(("make", "message"), [
    (lambda: SdramController(3, 50e6), "multiple of the 2-byte"),
    (lambda: SdramController(8, 50e6, read_delay=-2), "read_delay must be -1 or more"),
    (lambda: SdramTiming(cas_latency=1), "cas_latency must be 2 or 3"),
    (lambda: SdramTiming(init_refreshes=0), "init_refreshes must be at least 1"),
    (lambda: SdramGeometry(col_bits=11), "1 to 10 column bits"),
    (lambda: SdramTiming().cycles(100e3), "too slow for a refresh"),
])
def test_refused_settings_say_what_is_wrong(make, message):
    with pytest.raises(ValueError, match=message):
        make()
