"""Triton's perf_analyzer (installed by bench/setup.sh) as a client of a KServe v2 endpoint,
shared by the benchmarks (so tideserve and a real Triton are measured by exactly the same client)
and the test that checks tideserve serves it. It runs under `timeout` and an address-space limit
because its --streaming mode was seen to grow to 17 GB in two minutes; its CSV is parsed to the
same keys as tideserve_tools.loadgen's figures."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
import shlex
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from harness.cluster import ROOT

PERF_ANALYZER = ROOT / "bench" / ".tools" / "bin" / "perf_analyzer"
DEFAULT_MEM_LIMIT = 4 << 30  # address space; perf_analyzer at c=64 unary stays far below this


def perf_analyzer_command(
    url: str,
    model: str,
    concurrency: int,
    *,
    streaming: bool = False,
    measurement_ms: int = 5000,
    batch_size: int = 1,
    csv_path: Path,
    extra_args: list[str] | None = None,
) -> list[str]:
    """The perf_analyzer argument list (without the timeout/limit wrapper); one place to read it."""
    cmd = [
        str(PERF_ANALYZER),
        "-m",
        model,
        "-u",
        url,
        "-i",
        "grpc",
        "--concurrency-range",
        str(concurrency),
        "-b",
        str(batch_size),
        "--measurement-interval",
        str(measurement_ms),
        "-f",
        str(csv_path),
    ]
    if streaming:
        cmd.append("--streaming")
    return cmd + list(extra_args or [])


def parse_perf_analyzer_csv(text: str) -> list[dict[str, Any]]:
    """Turn perf_analyzer's ``-f`` CSV (one row per concurrency) into dicts with units in names.

    perf_analyzer writes latencies in microseconds; they are also given in ms because the
    benchmark targets (bench.suite's table) and every other figure of the docs are in ms.
    """
    rows: list[dict[str, Any]] = []
    for row in csv.DictReader(io.StringIO(text)):
        if not row.get("Concurrency"):
            continue

        def num(key: str, r: dict[str, str] = row) -> float | None:
            v = r.get(key)
            return float(v) if v not in (None, "") else None

        rec: dict[str, Any] = {
            "concurrency": int(float(row["Concurrency"])),
            "throughput_infer_per_s": num("Inferences/Second"),
        }
        for q in ("p50", "p90", "p95", "p99"):
            us = num(f"{q} latency")
            rec[f"{q}_us"] = us
            rec[f"{q}_ms"] = None if us is None else round(us / 1000.0, 3)
        rec["breakdown_us"] = {
            k: num(k)
            for k in (
                "Client Send",
                "Network+Server Send/Recv",
                "Server Queue",
                "Server Compute Input",
                "Server Compute Infer",
                "Server Compute Output",
                "Client Recv",
            )
            if k in row
        }
        rows.append(rec)
    return rows


def parse_server_section(text: str) -> dict[str, float]:
    """The "Server:" section perf_analyzer prints from the server's ModelStatistics (Triton's
    statistics extension), read from its standard output: counts, and the average request
    latency with its parts in microseconds. Empty when the section is missing (a server without
    the extension). The last section wins: perf_analyzer prints one per concurrency level."""
    sections = re.split(r"^\s*Server:\s*$", text, flags=re.MULTILINE)
    if len(sections) < 2:
        return {}
    section: dict[str, float] = {}
    for line in sections[-1].strip("\n").split("\n\n")[0].splitlines():
        name, _, value = line.strip().partition(":")
        key = name.lower().replace(" ", "_")
        number, _, parts = value.strip().partition(" usec")
        with contextlib.suppress(ValueError):
            section[f"{key}_us" if parts else key] = float(number)
        for part, usec in re.findall(r"([a-z][a-z ]*?) (\d+(?:\.\d+)?) usec", parts):
            section[f"{part.strip().replace(' ', '_')}_us"] = float(usec)
    return section


def _cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat: tells a quiet machine from a busy one."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return (0, 0)
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields) - idle, sum(fields))


def _busy_fraction(a: tuple[int, int], b: tuple[int, int]) -> float | None:
    """Fraction of all CPU time that was busy between two ``_cpu_times`` readings."""
    total = b[1] - a[1]
    return round((b[0] - a[0]) / total, 3) if total > 0 else None


def run_perf_analyzer(
    url: str,
    model: str,
    concurrency: int,
    *,
    streaming: bool = False,
    measurement_ms: int = 5000,
    batch_size: int = 1,
    timeout_s: float = 180.0,
    mem_limit_bytes: int = DEFAULT_MEM_LIMIT,
    stability_pct: float = 20.0,
    max_trials: int = 10,
    extra_args: list[str] | None = None,
) -> dict[str, Any]:
    """Run perf_analyzer once (one concurrency level) and return the parsed figures as a dict.

    ``timeout`` (SIGTERM, then SIGKILL 5 s later) and ``prlimit --as`` bound its time and memory so
    a runaway client cannot take the machine down with the server under test. Never raises on a
    failed run: ``ok`` is False and ``error`` holds the tail of its output, so a sweep continues.

    ``stability_pct``: perf_analyzer repeats windows until 3 in a row agree within this percentage
    (its default is 10). On this 2-core machine, where client and server share the cores, 10% often
    never settles at high concurrency, so the default here is looser; it is recorded in the result.
    """
    if not PERF_ANALYZER.exists():
        raise FileNotFoundError(f"{PERF_ANALYZER} missing: run bench/setup.sh")
    with tempfile.TemporaryDirectory(prefix="tideserve-pa-") as tmp:
        csv_path = Path(tmp) / "pa.csv"
        pa = perf_analyzer_command(
            url,
            model,
            concurrency,
            streaming=streaming,
            measurement_ms=measurement_ms,
            batch_size=batch_size,
            csv_path=csv_path,
            extra_args=[
                "--stability-percentage",
                str(stability_pct),
                "--max-trials",
                str(max_trials),
                *(extra_args or []),
            ],
        )
        cmd = [
            "timeout",
            "--kill-after=5",
            str(int(timeout_s)),
            "prlimit",
            f"--as={mem_limit_bytes}",
            "--",
            *pa,
        ]
        cpu0 = _cpu_times()
        load0 = os.getloadavg()[0]
        t0 = time.monotonic()
        # cwd=tmp: perf_analyzer may drop files in its working directory.
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp, check=False)
        wall = time.monotonic() - t0
        cpu1 = _cpu_times()
        csv_text = csv_path.read_text() if csv_path.exists() else ""
    rows = parse_perf_analyzer_csv(csv_text)
    out = (proc.stdout or "") + (proc.stderr or "")
    ok = proc.returncode == 0 and bool(rows)
    record: dict[str, Any] = {
        "driver": "perf_analyzer",
        "url": url,
        "model": model,
        "concurrency": concurrency,
        "batch_size": batch_size,
        "streaming": streaming,
        "measurement_ms": measurement_ms,
        "stability_pct": stability_pct,
        "mem_limit_bytes": mem_limit_bytes,
        "command": shlex.join(pa),
        "returncode": proc.returncode,
        "timed_out": proc.returncode in (124, 137),
        "wall_s": round(wall, 1),
        # Other load on the shared 2-core machine skews every figure; record it with the result.
        "loadavg_1m_before": round(load0, 2),
        "cpu_busy_fraction_during": _busy_fraction(cpu0, cpu1),
        "ok": ok,
    }
    if rows:
        record.update({k: v for k, v in rows[-1].items() if k != "concurrency"})
    record["server"] = parse_server_section(proc.stdout or "")
    if not ok:
        record["error"] = out[-2000:]
    return record
