"""The `mvu` command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .config import HardwareConfig

__all__ = ["main"]


def _load_config(path: str | None) -> HardwareConfig:
    if path is None:
        return HardwareConfig()
    try:
        return HardwareConfig.from_dict(json.loads(Path(path).read_text()))
    except (OSError, json.JSONDecodeError, TypeError, ValueError) as error:
        raise SystemExit(f"mvu: bad hardware configuration {path}: {error}") from None


def _print_gemm_report(report: dict) -> None:
    print(f"GEMM {report['m']} x {report['k']} x {report['n']} on {report['backend']}: "
          f"bit_exact={report['bit_exact']}")
    if "cycles" in report:
        mem = report["memory_model"]
        print(f"  cycles               {report['cycles']:,}")
        print(f"  MAC utilization      {100 * report['mac_utilization']:.1f} %")
        print(f"  modelled latency     {report['modelled_latency_ms']:.3f} ms at {report['config']['clock_mhz']:g} MHz")
        print(f"  memory model         {mem['latency_cycles']} cycles latency, {mem['bytes_per_cycle']:g} B/cycle; "
              f"{100 * report['memory_bandwidth_used']:.1f} % of it used")
        print(f"  simulation           {report['sim_seconds']:.2f} s, {report['sim_cycles_per_second']:,.0f} cycles/s, "
              f"{report['sim_macs_per_second']:.3g} MAC/s")
    else:
        print(f"  wall time            {report['sim_seconds']:.3f} s")


def _cmd_bench(args) -> int:
    from .benchmarks import bench_gemm

    config = _load_config(args.config)
    report = bench_gemm(config, args.m, args.k, args.n, backend=args.backend, seed=args.seed,
                        latency=args.latency, bytes_per_cycle=args.bandwidth)
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_gemm_report(report)
    return 0 if report["bit_exact"] else 1


def _cmd_info(args) -> int:
    config = _load_config(args.config)
    print(json.dumps({**config.to_dict(), "fingerprint": f"{config.fingerprint:#010x}",
                      "macs_per_cycle": config.macs_per_cycle}, indent=2))
    return 0


def _cmd_build(args) -> int:
    from mvu.sim.verilator_model import build_model

    print(build_model(_load_config(args.config)))
    return 0


def _cmd_synth(args) -> int:
    from mvu.hdl.synthesis import synthesize

    report = synthesize(_load_config(args.config), target=args.target)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{args.target} synthesis of {report['config_description']} in {report['seconds']:.0f} s")
        for cell, count in sorted(report["cells"].items(), key=lambda item: -item[1]):
            print(f"  {cell:<16} {count:>8}")
    return 0


def _cmd_demo(args) -> int:
    from .benchmarks import bench_gemm

    config = _load_config(args.config)
    print(f"mvu demo: a random quantized 256 x 512 x 256 product on the RTL model ({config.describe()})")
    report = bench_gemm(config, 256, 512, 256, backend="verilator", seed=1)
    _print_gemm_report(report)
    return 0 if report["bit_exact"] else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mvu", description="open matrix-vector-unit accelerator")
    parser.add_argument("--config", help="hardware configuration JSON (default: the built-in default)")
    commands = parser.add_subparsers(dest="command", required=True)

    bench = commands.add_parser("bench", help="benchmarks")
    bench_kinds = bench.add_subparsers(dest="kind", required=True)
    gemm = bench_kinds.add_parser("gemm", help="a random quantized matrix product, checked against the reference")
    gemm.add_argument("--m", type=int, default=300)
    gemm.add_argument("--k", type=int, default=700)
    gemm.add_argument("--n", type=int, default=500)
    gemm.add_argument("--backend", choices=("reference", "verilator"), default="verilator")
    gemm.add_argument("--seed", type=int, default=0)
    gemm.add_argument("--latency", type=int, default=40, help="memory model latency in cycles")
    gemm.add_argument("--bandwidth", type=float, default=None,
                      help="memory model bytes per cycle (default: one beat per cycle)")
    gemm.add_argument("--json", action="store_true", help="print the report as JSON")
    gemm.add_argument("--output", help="also write the JSON report to this file")
    gemm.set_defaults(handler=_cmd_bench)

    info = commands.add_parser("info", help="print the hardware configuration")
    info.set_defaults(handler=_cmd_info)
    build = commands.add_parser("build", help="build (or find in the cache) the Verilator model")
    build.set_defaults(handler=_cmd_build)
    synth = commands.add_parser("synth", help="synthesize the design with Yosys and report cells")
    synth.add_argument("--target", choices=("ecp5",), default="ecp5")
    synth.add_argument("--json", action="store_true")
    synth.set_defaults(handler=_cmd_synth)
    demo = commands.add_parser("demo", help="run the demo")
    demo.set_defaults(handler=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("m", "k", "n"):
        if getattr(args, name, 1) < 1:
            raise SystemExit(f"mvu: --{name} must be at least 1")
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
