"""`mvu score URL IMAGE...`: classify images with a running `mvu serve`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TextIO

from mvu.host.tools.client import ScoringClient, ScoringError

__all__ = ["format_result", "main_score"]


def format_result(image: str, result: dict) -> str:
    """The text `mvu score` prints for one image."""
    model = result.get("model_name", "?")
    version = result.get("model_version")
    lines = [f"{image}  ({model}" + (f" v{version})" if version not in (None, "") else ")")]
    for entry in result.get("top", []):
        lines.append(f"  {entry.get('score', 0.0):7.4f}  {entry.get('label', '')}  (class {entry.get('class')})")
    timings = result.get("timings_ms") or {}
    parts = []
    if "cycles" in result:
        parts.append(f"cycles {result['cycles']:,}")
    if "modelled_ms" in result:
        parts.append(f"modelled {result['modelled_ms']:.3f} ms")
    if "total" in timings:
        detail = ", ".join(f"{k} {timings[k]:.1f}" for k in ("queue", "preprocess", "executor") if k in timings)
        parts.append(f"server {timings['total']:.1f} ms" + (f" ({detail})" if detail else ""))
    if parts:
        lines.append("  " + "; ".join(parts))
    return "\n".join(lines)


def main_score(args: argparse.Namespace, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Score each image; 0 when all succeeded, 1 when any failed, 2 for a bad URL."""
    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
    key = args.key or os.environ.get("MVU_API_KEY") or None
    try:
        client = ScoringClient(args.url, key=key, cacert=args.cacert, timeout=args.timeout, retries=args.retries)
    except ValueError as error:
        print(f"mvu score: {error}", file=stderr)
        return 2
    if args.cacert and not Path(args.cacert).is_file():
        print(f"mvu score: --cacert {args.cacert}: no such file", file=stderr)
        return 2
    failed, results = 0, []
    with client:
        for image in args.images:
            try:
                data = Path(image).read_bytes()
                result = client.score_image(data, top=args.top, model=args.model, version=args.version)
            except (OSError, ScoringError) as error:
                failed += 1
                cause = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
                cause = " ".join(str(cause).split())  # one line
                print(f"mvu score: {image}: {cause}", file=stderr)
                results.append({"image": image, "error": cause})
                continue
            if args.json:
                results.append({"image": image, **result})
            else:
                print(format_result(image, result), file=stdout, flush=True)
    if args.json:
        json.dump(results, stdout, indent=2)
        stdout.write("\n")
    return 1 if failed else 0
