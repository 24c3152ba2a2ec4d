"""`mvu bench serving`: latency and throughput of `mvu serve` under load, optionally beside PyTriton.

For each server (``mvu serve PACKAGE``, and with ``--triton`` the same package on
NVIDIA PyTriton, see :mod:`mvu.host.tools.triton_baseline`) started as a subprocess,
and each concurrency level C of ``--clients``, C threads, each with its own
keep-alive connection, share ``--requests`` binary Open Inference Protocol infer
requests carrying one JPEG as the BYTES input ``images``. Per level the report has:

* ``latency_ms``: client-side request latency (p50, p99, mean, max) of the successful requests;
* ``throughput_rps``: successful requests per second of wall time;
* ``overhead_ms``: client latency minus the time spent on decoding, preprocessing and the model,
  i.e. what the serving stack adds (network, HTTP, (de)serialization, queueing, batching).
  For `mvu serve`: latency - Server-Timing ``preprocess`` - ``executor``; for Triton:
  latency - the callable's ``executor_ms`` output (which includes the decoding and preprocessing);
* ``server_overhead_ms``: the same seen from inside the server: Server-Timing ``total`` -
  ``preprocess`` - ``executor`` (Triton: from its statistics extension, a mean only);
* ``server_timing_ms``: p50/p99 of each Server-Timing entry; ``errors`` and a few of their messages.

Note that executor time of a batch counts fully in each of its requests, so queueing
while another batch runs is overhead.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import urllib3

from mvu.host.tools.client import HEADER_LENGTH, decode_infer_response, encode_infer_request, parse_server_timing

__all__ = ["Sample", "ServerProcess", "default_image", "format_table", "main_bench_serving", "run_level",
           "run_load", "summarize"]

#: Seconds a server may take from launch to answering ready.
START_TIMEOUT = 600.0
#: Seconds one request may take under load.
REQUEST_TIMEOUT = 300.0


@dataclass
class Sample:
    """One request: client latency (ms), the server's Server-Timing, Triton's executor_ms, or an error."""

    latency_ms: float
    timing: dict[str, float] = field(default_factory=dict)
    executor_ms: float | None = None
    error: str | None = None


# --------------------------------------------------------------------------- inputs


def default_image() -> tuple[str, bytes]:
    """The first demo photo as a JPEG at quality 90: (its name, its bytes)."""
    from PIL import Image

    from mvu.host.compiler.recipes import demo_photos

    source = demo_photos()[0]
    with Image.open(source) as image:
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="JPEG", quality=90)
    return f"{source.name} as JPEG q90", buffer.getvalue()


def package_name(path: str | Path) -> str:
    """A package's model name, read from its manifest alone."""
    try:
        with zipfile.ZipFile(path) as archive:
            return str(json.loads(archive.read("manifest.json"))["name"])
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as error:
        raise SystemExit(f"mvu bench serving: {path}: not an mvu model package ({error})") from None


# --------------------------------------------------------------------------- server processes


class ServerProcess:
    """A server run as a subprocess that writes its ports as JSON to a ready file once it listens."""

    def __init__(self, name: str, command: Sequence[str], ready_file: Path, *, env: dict[str, str] | None = None):
        self.name, self.command, self.ready_file = name, list(command), ready_file
        self._log = tempfile.TemporaryFile()
        self.started = time.perf_counter()
        self.process = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log,
                                        env=env, start_new_session=True)
        self.info: dict[str, Any] = {}

    def log_tail(self, lines: int = 15) -> str:
        self._log.seek(0)
        return "\n".join(self._log.read().decode("utf-8", "replace").splitlines()[-lines:])

    def wait_ready(self, timeout: float = START_TIMEOUT, health_path: str = "/v2/health/ready") -> dict[str, Any]:
        """The ready file's JSON, once the server also answers ``health_path`` with 200; seconds in ``start_s``."""
        deadline = self.started + timeout
        while not self.info:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with status {self.process.returncode} before it was ready:\n"
                                   f"{self.log_tail()}")
            if time.perf_counter() > deadline:
                raise RuntimeError(f"{self.name} not ready after {timeout:g} s:\n{self.log_tail()}")
            try:
                info = json.loads(self.ready_file.read_text())
                if isinstance(info, dict) and int(info.get("http_port", 0)) > 0:
                    self.info = info
            except (OSError, ValueError):
                pass
            time.sleep(0.02)
        http = urllib3.HTTPConnectionPool("127.0.0.1", int(self.info["http_port"]), maxsize=1, retries=False,
                                          timeout=urllib3.Timeout(total=5.0))
        while True:
            try:
                if http.request("GET", health_path).status == 200:
                    break
            except urllib3.exceptions.HTTPError:
                pass
            if self.process.poll() is not None or time.perf_counter() > deadline:
                raise RuntimeError(f"{self.name} never answered {health_path} with 200:\n{self.log_tail()}")
            time.sleep(0.02)
        http.close()
        self.info["start_s"] = time.perf_counter() - self.started
        return self.info

    def stop(self, grace: float = 30.0) -> None:
        """SIGTERM, then SIGKILL to the whole process group after ``grace`` seconds."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # children (tritonserver, stubs) of our own session
        except (ProcessLookupError, PermissionError):
            pass
        self.process.wait()
        self._log.close()

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# --------------------------------------------------------------------------- load


def run_level(url: str, path: str, body: bytes, headers: dict[str, str], clients: int, requests: int, *,
              executor_output: str | None = None, timeout: float = REQUEST_TIMEOUT) -> tuple[list[Sample], float]:
    """``requests`` POSTs of ``body`` to ``url + path`` from ``clients`` threads; the samples and the wall time (s)."""
    remaining = [requests]
    lock = threading.Lock()
    samples: list[Sample] = []
    barrier = threading.Barrier(clients + 1)

    def worker() -> None:
        pool = urllib3.connection_from_url(url, maxsize=1, block=True, retries=False,
                                           timeout=urllib3.Timeout(total=timeout))
        mine: list[Sample] = []
        barrier.wait()
        while True:
            with lock:
                if remaining[0] <= 0:
                    break
                remaining[0] -= 1
            started = time.perf_counter()
            try:
                response = pool.request("POST", path, body=body, headers=headers)
            except urllib3.exceptions.HTTPError as error:
                mine.append(Sample((time.perf_counter() - started) * 1e3, error=f"{type(error).__name__}: {error}"))
                continue
            sample = Sample((time.perf_counter() - started) * 1e3,
                            parse_server_timing(response.headers.get("Server-Timing")))
            if response.status != 200:
                sample.error = f"HTTP {response.status}: {response.data[:200].decode('utf-8', 'replace')}"
            else:
                try:
                    length = response.headers.get(HEADER_LENGTH)
                    _, outputs = decode_infer_response(response.data, int(length) if length is not None else None)
                    if executor_output:
                        sample.executor_ms = float(np.max(outputs[executor_output]))
                except (ValueError, KeyError) as error:
                    sample.error = f"bad response: {error}"
            mine.append(sample)
        pool.close()
        with lock:
            samples.extend(mine)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    return samples, time.perf_counter() - started


def _percentiles(values: Sequence[float]) -> dict[str, float] | None:
    if not len(values):
        return None
    array = np.asarray(values, np.float64)
    p50, p99 = np.percentile(array, [50, 99])
    return {"p50": round(float(p50), 3), "p99": round(float(p99), 3)}


def summarize(samples: Sequence[Sample], wall_s: float, clients: int) -> dict[str, Any]:
    """One level's report (see the module's docstring)."""
    ok = [s for s in samples if s.error is None]
    errors = [s.error for s in samples if s.error is not None]
    latencies = [s.latency_ms for s in ok]
    level: dict[str, Any] = {"clients": clients, "requests": len(samples), "ok": len(ok), "errors": len(errors),
                             "wall_s": round(wall_s, 4), "throughput_rps": round(len(ok) / wall_s, 3) if wall_s else 0.0}
    if latencies:
        level["latency_ms"] = {**_percentiles(latencies), "mean": round(float(np.mean(latencies)), 3),
                               "max": round(float(np.max(latencies)), 3)}
    timed = [s for s in ok if "executor" in s.timing]
    if timed:
        work = [s.timing["executor"] + s.timing.get("preprocess", 0.0) for s in timed]
        level["overhead_ms"] = _percentiles([s.latency_ms - w for s, w in zip(timed, work)])
        totals = [(s.timing["total"], w) for s, w in zip(timed, work) if "total" in s.timing]
        level["server_overhead_ms"] = _percentiles([t - w for t, w in totals])
        names = sorted({name for s in timed for name in s.timing})
        level["server_timing_ms"] = {name: _percentiles([s.timing[name] for s in timed if name in s.timing])
                                     for name in names}
    executed = [s for s in ok if s.executor_ms is not None]
    if executed:
        level["overhead_ms"] = _percentiles([s.latency_ms - s.executor_ms for s in executed])
        level["executor_ms"] = _percentiles([s.executor_ms for s in executed])
    if ok and not timed and not executed:
        level["note"] = "no Server-Timing (preprocess, executor) in the responses: overhead unknown"
    if errors:
        level["error_samples"] = list(dict.fromkeys(errors))[:3]
    return level


def _triton_stats(url: str, model: str, token: str | None) -> tuple[int, int] | None:
    """Triton's cumulative (successful requests, their total ns) for ``model``."""
    try:
        response = urllib3.request("GET", f"{url}/v2/models/{model}/stats", timeout=5.0, retries=False,
                                   headers={"triton-access-token": token} if token else None)
        success = json.loads(response.data)["model_stats"][0]["inference_stats"]["success"]
        return int(success["count"]), int(success["ns"])
    except (urllib3.exceptions.HTTPError, ValueError, KeyError, IndexError, TypeError):
        return None


def run_load(url: str, model: str, image: bytes, levels: Sequence[int], requests: int, *, triton: bool = False,
             warmup: int = 2, triton_token: str | None = None) -> dict[str, Any]:
    """Warm-up requests, then each concurrency level; the server's part of the report."""
    if triton:  # Triton's dynamic batcher needs a batch dimension: shape [1, 1]
        body, headers = encode_infer_request({"images": np.array([[image]], dtype=object)}, ["scores", "executor_ms"])
    else:
        body, headers = encode_infer_request({"images": [image]}, ["scores"])
    path = f"/v2/models/{model}/infer"
    executor_output = "executor_ms" if triton else None
    result: dict[str, Any] = {"levels": []}
    samples, _ = run_level(url, path, body, headers, 1, max(1, warmup), executor_output=executor_output)
    result["first_request_ms"] = round(samples[0].latency_ms, 3) if samples else None
    warm_errors = [s.error for s in samples if s.error]
    if warm_errors:
        result["warmup_errors"] = warm_errors[:3]
    for clients in levels:
        before = _triton_stats(url, model, triton_token) if triton else None
        samples, wall = run_level(url, path, body, headers, clients, requests, executor_output=executor_output)
        level = summarize(samples, wall, clients)
        after = _triton_stats(url, model, triton_token) if triton else None
        if before and after and after[0] > before[0] and "executor_ms" in level:
            server_mean = (after[1] - before[1]) / (after[0] - before[0]) / 1e6
            executor_mean = float(np.mean([s.executor_ms for s in samples if s.executor_ms is not None]))
            level["server_overhead_ms"] = {"mean": round(server_mean - executor_mean, 3)}
        result["levels"].append(level)
    return result


# --------------------------------------------------------------------------- report


def _cell(level: dict, key: str, stat: str) -> str:
    value = (level.get(key) or {}).get(stat)
    return f"{value:.1f}" if isinstance(value, (int, float)) else "-"


def format_table(report: dict[str, Any]) -> str:
    """The report as a text table, servers side by side per concurrency level."""
    lines = [f"package {report['package']} ({report['model']}), backend {report['backend']}, "
             f"image {report['image']['source']} ({report['image']['bytes']} bytes), "
             f"{report['requests_per_level']} requests per level, {report['host']['cpus']} CPUs"]
    servers = report["servers"]
    for name, server in servers.items():
        if "error" in server:
            lines.append(f"{name}: FAILED: {server['error'].splitlines()[0]}")
        else:
            lines.append(f"{name}: ready after {server['start_s']:.2f} s, first request {server['first_request_ms']:.1f} ms"
                         + (f" (pytriton start {server['triton_start_s']:.2f} s)" if "triton_start_s" in server else ""))
    header = ("server", "clients", "ok", "err", "req/s", "p50 ms", "p99 ms", "ovh p50", "ovh p99",
              "srv-ovh p50", "srv-ovh p99")
    rows = [header]
    for index, clients in enumerate(report["clients"]):
        for name, server in servers.items():
            if "error" in server or index >= len(server["levels"]):
                continue
            level = server["levels"][index]
            server_overhead = level.get("server_overhead_ms") or {}
            rows.append((name, str(clients), str(level["ok"]), str(level["errors"]), f"{level['throughput_rps']:.2f}",
                         _cell(level, "latency_ms", "p50"), _cell(level, "latency_ms", "p99"),
                         _cell(level, "overhead_ms", "p50"), _cell(level, "overhead_ms", "p99"),
                         _cell(level, "server_overhead_ms", "p50" if "p50" in server_overhead else "mean"),
                         _cell(level, "server_overhead_ms", "p99")))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines += ["  ".join(cell.rjust(width) if i else cell.ljust(width) for i, (cell, width) in enumerate(zip(row, widths)))
              for row in rows]
    for name, server in servers.items():
        for level in server.get("levels", []):
            for message in level.get("error_samples", []):
                lines.append(f"{name} @ {level['clients']} clients: {message}")
    if "triton" in servers:
        lines.append("ovh: client latency - (preprocess + executor); Triton: - executor_ms (decode+preprocess+model); "
                     "Triton srv-ovh: mean from its statistics")
    return "\n".join(lines)


# --------------------------------------------------------------------------- command


def _bench_server(name: str, command: list[str], ready_file: Path, model: str, image: bytes, levels: list[int],
                  requests: int, *, triton: bool) -> dict[str, Any]:
    server = ServerProcess(name, command, ready_file)
    try:
        info = server.wait_ready()
        url = f"http://127.0.0.1:{int(info['http_port'])}"
        result = {"command": " ".join(command), "start_s": round(info["start_s"], 3)}
        for key in ("load_s", "triton_start_s"):
            if key in info:
                result[key] = round(float(info[key]), 3)
        result.update(run_load(url, info.get("model_name", model), image, levels, requests, triton=triton,
                               triton_token=info.get("access_token")))
        return result
    except RuntimeError as error:
        return {"command": " ".join(command), "error": str(error)}
    finally:
        server.stop()


def main_bench_serving(args: argparse.Namespace) -> int:
    """Run the benchmark; print a table (or JSON with --json); 1 if a server failed to start."""
    try:
        levels = [int(c) for c in str(args.clients).split(",") if c.strip()]
        if not levels or min(levels) < 1:
            raise ValueError
    except ValueError:
        print(f"mvu bench serving: --clients {args.clients!r}: expected positive integers like 1,4,16", file=sys.stderr)
        return 2
    if not Path(args.package).is_file():
        print(f"mvu bench serving: {args.package}: no such file", file=sys.stderr)
        return 2
    if args.image:
        try:
            image_name, image = args.image, Path(args.image).read_bytes()
        except OSError as error:
            print(f"mvu bench serving: {args.image}: {error.strerror}", file=sys.stderr)
            return 2
    else:
        image_name, image = default_image()
    model = package_name(args.package)
    report: dict[str, Any] = {
        "package": str(args.package), "model": model, "backend": args.backend,
        "image": {"source": image_name, "bytes": len(image)}, "clients": levels, "requests_per_level": args.requests,
        "host": {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version()},
        "servers": {},
    }
    with tempfile.TemporaryDirectory(prefix="mvu-bench-serving-") as folder:
        ready = Path(folder) / "mvu-ready.json"
        command = [sys.executable, "-m", "mvu.host.tools.cli", "serve", str(args.package), "--backend", args.backend,
                   "--port", "0", "--grpc-port", "-1", "--ready-file", str(ready), "--access-log", "off"]
        report["servers"]["mvu"] = _bench_server("mvu serve", command, ready, model, image, levels, args.requests,
                                                 triton=False)
        if args.triton:
            from mvu.host.tools.triton_baseline import triton_python

            ready = Path(folder) / "triton-ready.json"
            command = [triton_python(), "-m", "mvu.host.tools.triton_baseline", str(args.package), "--backend",
                       args.backend, "--ready-file", str(ready)]
            result = _bench_server("pytriton", command, ready, model, image, levels, args.requests, triton=True)
            if "error" in result and "No module named 'pytriton'" in result["error"]:
                result["error"] = (f"nvidia-pytriton is not installed for {command[0]}: install it there "
                                   "(pip install nvidia-pytriton; it needs numpy<2) or point $MVU_TRITON_PYTHON "
                                   "at a Python that has it and mvu\n" + result["error"])
            report["servers"]["triton"] = result
    text = json.dumps(report, indent=2)
    if args.output:
        Path(args.output).write_text(text + "\n")
    print(text if args.json else format_table(report))
    return 1 if any("error" in server for server in report["servers"].values()) else 0
