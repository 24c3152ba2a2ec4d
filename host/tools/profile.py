"""Where the time goes: per-layer cycles, MAC utilization and wall time, as a table and a chart."""

from __future__ import annotations

from pathlib import Path

from mvu.hdl.contract.config import HardwareConfig
from mvu.host.runtime.runner import LayerStats

__all__ = ["layer_table", "plot_profile"]


def layer_table(stats: list[LayerStats], config: HardwareConfig) -> str:
    """A text table, one row per layer, with totals; ``lowering`` says how a convolution reached the array
    (``windows``, ``packed rows``: window LOADs read its input; ``im2col``: host patches)."""
    lines = [f"{'layer':<28} {'op':<12} {'where':<11} {'lowering':<11} {'MACs':>13} {'cycles':>11} {'MAC util':>8} "
             f"{'wall ms':>8} {'im2col ms':>9}"]
    total_cycles = total_macs = 0
    total_seconds = 0.0
    for s in stats:
        utilization = f"{s.macs / (s.cycles * config.macs_per_cycle):.1%}" if s.cycles else ""
        lines.append(f"{s.name[:28]:<28} {s.kind:<12} {s.placement:<11} {s.lowering:<11} {s.macs:>13,} {s.cycles:>11,} "
                     f"{utilization:>8} {1e3 * s.seconds:>8.1f} {1e3 * s.im2col_seconds:>9.1f}")
        total_cycles += s.cycles
        total_seconds += s.seconds
        total_macs += s.macs if s.placement == "accelerator" else 0
    overall = f"{total_macs / (total_cycles * config.macs_per_cycle):.1%}" if total_cycles else ""
    im2col = sum(s.im2col_seconds for s in stats)
    lines.append(f"{'total (accelerator MACs)':<65} {total_macs:>13,} {total_cycles:>11,} {overall:>8} "
                 f"{1e3 * total_seconds:>8.1f} {1e3 * im2col:>9.1f}")
    if total_cycles:
        lines.append(f"modelled accelerator latency: {config.modelled_ms(total_cycles):.2f} ms at "
                     f"{config.clock_mhz:g} MHz")
    return "\n".join(lines)


def plot_profile(stats: list[LayerStats], config: HardwareConfig, path: str | Path) -> Path:
    """A two-panel bar chart: accelerator cycles and host wall time per layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [s.name for s in stats]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(max(8, len(stats) * 0.18), 7), sharex=True)
    top.bar(range(len(stats)), [s.cycles for s in stats], color="tab:blue")
    top.set_ylabel("accelerator cycles")
    top.set_title(f"per-layer profile ({config.describe()})")
    bottom.bar(range(len(stats)), [1e3 * s.seconds for s in stats],
               color=["tab:orange" if s.placement == "host" else "tab:green" for s in stats])
    bottom.set_ylabel("wall ms (green: accelerator layer, orange: host)")
    bottom.set_xticks(range(len(stats)), names, rotation=90, fontsize=6)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path)
    plt.close(figure)
    return path
