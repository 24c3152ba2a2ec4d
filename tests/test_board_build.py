"""Board presets, the resource check before synthesis, the float32 path left out, nextpnr's report, and
(slow) `mvu build --board`'s bitstreams."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY

from mvu.hdl.board_build import FAMILIES, build_bitstream, format_report, parse_nextpnr_report
from mvu.hdl.board_soc import BoardTop, ecp5_pll_dividers
from mvu.hdl.contract.config import PRESETS, HardwareConfig, preset
from mvu.hdl.contract.isa import Finish, ProgramError, Store
from mvu.hdl.contract.program import MemoryImage, Program, check_program
from mvu.hdl.contract.requantization import Requantization, requantization_block
from mvu.hdl.resources import CHIPS, ResourceError, check_fits, estimate
from mvu.host.tools.cli import main

FIXTURES = Path(__file__).with_name("fixtures")
NO_FLOAT32 = dataclasses.replace(TINY, float32_requant=False)


def test_presets_are_named_and_the_default_is_the_default():
    assert set(PRESETS) >= {"default", "ulx3s-85f", "icebreaker"}
    assert preset("default") == HardwareConfig()
    assert not preset("ulx3s-85f").float32_requant
    with pytest.raises(ValueError, match="no hardware preset 'ulx3s'; presets: default, ulx3s-85f, icebreaker"):
        preset("ulx3s")


def test_a_later_option_at_its_default_keeps_the_fingerprint():
    """Configurations from before float32_requant and residual_add existed keep the fingerprint their bitstreams
    report."""
    later = ("float32_requant", "residual_add")
    before = {key: value for key, value in HardwareConfig().to_dict().items() if key not in later}
    old = int.from_bytes(hashlib.sha256(json.dumps(before, sort_keys=True).encode()).digest()[:4], "little")
    assert HardwareConfig().fingerprint == old
    for option in later:
        assert dataclasses.replace(HardwareConfig(), **{option: False}).fingerprint != old
    assert HardwareConfig.from_dict(before) == HardwareConfig()
    with pytest.raises(TypeError, match="float32_requant must be true or false, not 1"):
        HardwareConfig(float32_requant=1)


def test_the_cli_takes_a_preset_wherever_it_takes_a_configuration(capsys):
    assert main(["--config", "ulx3s-85f", "info"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["rows"], shown["cols"], shown["float32_requant"]) == (8, 8, False)
    assert shown["fingerprint"] == f"{preset('ulx3s-85f').fingerprint:#010x}"


#: The on-chip memory of the ULX3S builds measured before its SDRAM (64-bit words: 64 DP16KD).
MEASURED_MEMORY = 128 * 1024
#: The ULX3S's memory: its SDRAM.
ULX3S_MEMORY = {"memory_bytes": 32 << 20, "memory": "sdram"}


def test_the_estimate_matches_measured_synthesis():
    """DSP and block RAM counts of the ULX3S builds (with the residual add, which its preset leaves out: nextpnr
    147 MULT18X18D, Yosys 152, and 110 DP16KD with its 128 KiB memory; without it nextpnr 99): per cell a
    multiplier, per lane the post-processor's 32 x 32 product (4) and the residual add's two 53 x 9 products
    (3 each), 7 in the load unit's window set-up."""
    ecp5 = CHIPS["LFE5U-85F"]
    ulx3s = estimate(preset("ulx3s-85f"), ecp5, memory_bytes=MEASURED_MEMORY)
    assert ulx3s["dsp"] == 8 * 8 + 8 * 4 + 7 and 99 <= ulx3s["dsp"] <= 104
    adding = estimate(dataclasses.replace(preset("ulx3s-85f"), residual_add=True), ecp5,
                      memory_bytes=MEASURED_MEMORY)
    assert (adding["dsp"], adding["bram"]) == (8 * 8 + 8 * (4 + 6) + 7, 110) and 147 <= adding["dsp"] <= 152
    assert adding["lut"] > ulx3s["lut"]
    assert estimate(HardwareConfig(), ecp5)["dsp"] == 1024 + 32 * 10 + 7
    # Leaving out the float32 path saves logic, not multipliers: they are shared by both paths.
    fixed = dataclasses.replace(HardwareConfig(), float32_requant=False)
    assert estimate(fixed, ecp5)["dsp"] == estimate(HardwareConfig(), ecp5)["dsp"]
    assert estimate(fixed, ecp5)["lut"] < estimate(HardwareConfig(), ecp5)["lut"]


def test_a_configuration_that_cannot_fit_is_refused_naming_the_resource():
    measured = HardwareConfig(rows=8, cols=16, act_depth=4096, wgt_depth=2048, acc_depth=2048, mem_bytes=8)
    with pytest.raises(ResourceError, match=r"does not fit the LFE5U-85F: it needs about 295 MULT18X18D \(dsp\) "
                                            r"but the chip has 156"):
        check_fits(measured, CHIPS["LFE5U-85F"])
    deep = dataclasses.replace(preset("ulx3s-85f"), acc_depth=8192)
    with pytest.raises(ResourceError, match=r"DP16KD \(bram\) but the chip has 208"):
        check_fits(deep, CHIPS["LFE5U-85F"], **ULX3S_MEMORY)
    need = check_fits(preset("ulx3s-85f"), CHIPS["LFE5U-85F"], **ULX3S_MEMORY)
    assert need == estimate(preset("ulx3s-85f"), CHIPS["LFE5U-85F"], **ULX3S_MEMORY) and need["dsp"] <= 156


def test_the_sdram_takes_no_block_ram_and_its_controller_logic():
    ecp5, config = CHIPS["LFE5U-85F"], preset("ulx3s-85f")
    on_chip, core = estimate(config, ecp5, memory_bytes=MEASURED_MEMORY), estimate(config, ecp5)
    sdram = estimate(config, ecp5, **ULX3S_MEMORY)
    assert on_chip["bram"] - sdram["bram"] == 64 and sdram["bram"] == core["bram"]
    assert (sdram["lut"] - core["lut"], sdram["ff"] - core["ff"]) == (621, 425)
    with pytest.raises(ValueError, match="a board's memory is one of bram, sdram, not 'hbm'"):
        estimate(config, ecp5, memory="hbm")


def test_the_ulx3s_top_puts_the_memory_on_its_sdram():
    """BoardTop on the ULX3S drives every pin of the platform's sdram resource (the SDRAM controller); its
    memory is the chip's 32 MB."""
    from amaranth.build import Subsignal
    from amaranth_boards.icebreaker import ICEBreakerPlatform
    from amaranth_boards.ulx3s import ULX3S_85F_Platform

    def top(memory_bytes: int, memory: str = "sdram") -> BoardTop:
        return BoardTop(TINY, oscillator_mhz=25.0, memory=memory, memory_bytes=memory_bytes, baud=3_000_000, leds={})

    resource = ULX3S_85F_Platform().resources["sdram", 0]
    wanted = {pin for io in resource.ios if isinstance(io, Subsignal) for pin in io.ios[0].names}
    constraints = ULX3S_85F_Platform().prepare(top(32 << 20), name="top").files["top.lpf"]
    placed = set(re.findall(r'LOCATE COMP "sdram_0__[^"]+" SITE "(\w+)"', constraints))
    assert placed == wanted and len(wanted) == 39
    with pytest.raises(ValueError, match="ULX3S_85F_Platform's SDRAM holds 33554432 bytes: its memory_bytes must "
                                         "be that, not 131072"):
        ULX3S_85F_Platform().prepare(top(128 * 1024), name="top")
    with pytest.raises(ValueError, match="the ICEBreakerPlatform has no SDRAM"):
        ICEBreakerPlatform().prepare(top(32 << 20), name="top")
    with pytest.raises(ValueError, match="a board's memory is one of bram, sdram, not 'hbm'"):
        top(32 << 20, "hbm")


def test_building_a_board_that_cannot_fit_fails_before_synthesis():
    with pytest.raises(SystemExit, match=r"mvu: .* does not fit the iCE40UP5K: it needs about 39 SB_MAC16 "
                                         r"\(dsp\) but the chip has 8"):
        main(["build", "--board", "icebreaker"])


def test_pll_dividers_are_exact_and_inside_the_vco_range():
    assert ecp5_pll_dividers(25, 50) == {"CLKI_DIV": 1, "CLKFB_DIV": 2, "CLKOP_DIV": 12}  # as ecppll chooses
    for mhz in (40, 62.5, 75, 100):
        dividers = ecp5_pll_dividers(25, mhz)
        assert 25 / dividers["CLKI_DIV"] * dividers["CLKFB_DIV"] == pytest.approx(mhz)
        assert 400 <= mhz * dividers["CLKOP_DIV"] <= 800
    with pytest.raises(ValueError, match="cannot make exactly 33 MHz from 25 MHz"):
        ecp5_pll_dividers(25, 33)  # 1 MHz steps need a phase detector below its 3.125 MHz


def _store_program(config: HardwareConfig, *, float32_scale: bool) -> Program:
    memory = MemoryImage()
    memory.allocate(4096)
    memory.data[1024:1024 + config.param_block_bytes] = requantization_block(config, [0] * 4, [1 << 20] * 4, [31] * 4)
    return Program.place(memory, [Store(acc_addr=0, count=1, dram_addr=0, dram_stride=16, param_addr=1024,
                                        load_params=True, float32_scale=float32_scale), Finish()])


def test_float32_requantization_is_refused_where_it_is_not_built():
    program = _store_program(NO_FLOAT32, float32_scale=True)
    with pytest.raises(ProgramError, match=r"instruction 0 \(STORE\): float32_scale requantization is not built "
                                           r"into this configuration .*no float32 requantization"):
        check_program(NO_FLOAT32, program.memory, program.address, program.length)
    check_program(TINY, program.memory, program.address, program.length)
    fixed = _store_program(NO_FLOAT32, float32_scale=False)
    check_program(NO_FLOAT32, fixed.memory, fixed.address, fixed.length)


def test_a_core_without_float32_requantizes_bit_exactly(verilator_executors):
    from mvu.host.executors.reference import ReferenceExecutor
    from mvu.host.gemm import GemmProgram

    rng = np.random.default_rng(11)
    a = rng.integers(0, 256, (21, 37), dtype=np.uint8)
    w = rng.integers(-128, 128, (37, 11), dtype=np.int8)
    requant = Requantization.from_scales(rng.uniform(1e-4, 1e-3, 11), rng.integers(-500, 500, 11))
    on_rtl = GemmProgram(NO_FLOAT32, a, w, act_zero_point=128, requant=requant)
    reference = GemmProgram(NO_FLOAT32, a, w, act_zero_point=128, requant=requant)
    verilator_executors(NO_FLOAT32).run(on_rtl.program)
    ReferenceExecutor(NO_FLOAT32).run(reference.program)
    np.testing.assert_array_equal(on_rtl.result(), reference.result())


def test_nextpnr_report_is_parsed_into_resources_and_fmax():
    """A report nextpnr-ecp5 wrote for the ULX3S build (tests/fixtures/nextpnr_ulx3s_report.json)."""
    report = json.loads((FIXTURES / "nextpnr_ulx3s_report.json").read_text())
    parsed = parse_nextpnr_report(report, FAMILIES["ecp5"])
    assert set(parsed["resources"]) == {"lut", "ff", "dsp", "bram"}
    assert parsed["resources"]["dsp"] == {"used": report["utilization"]["MULT18X18D"]["used"], "available": 156}
    assert parsed["resources"]["bram"]["available"] == 208
    (clock, fmax), = parsed["fmax"].items()
    assert fmax["constraint"] == pytest.approx(50.0) and fmax["achieved"] == pytest.approx(56.82, abs=0.01)
    assert parsed["critical_path"]["to"].startswith("soc.core.store.ppu.product_")
    build = {"board": "ulx3s", "chip": "LFE5U-85F", "config_description": "8x8", "estimate": {
        "dsp": 96, "bram": 106, "lut": 1, "ff": 1}, "bitstream": "top.bit", "program": "openFPGALoader top.bit",
        **parsed}
    text = format_report(build)
    assert f"Fmax {clock}: {fmax['achieved']:.1f} MHz (target 50.0 MHz" in text
    assert "openFPGALoader top.bit" in text


@pytest.mark.slow
@pytest.mark.parametrize("board", ["ulx3s"])
def test_board_bitstream_builds_and_meets_its_clock(board, capsys):
    """About 10 to 14 minutes for the ULX3S's SDRAM top on a 2-core machine (static placement and router1: nearly all
    of it); then the CLI finds it in the cache."""
    build = build_bitstream(board, progress=print)
    assert main(["build", "--board", board]) == 0
    assert "cached build" in capsys.readouterr().out
    assert not build["timing_failures"], build["timing_failures"]
    bitstream = Path(build["bitstream"])
    assert bitstream.stat().st_size > 100_000
    assert build["resources"]["dsp"]["used"] <= build["estimate"]["dsp"]
    assert all(clock["achieved"] >= 50 for clock in build["fmax"].values())
