"""Supervisor benchmark: add-extension latency, restart after kill -9, worker memory, idle CPU.

`python -m audiogw.client.bench_supervisor [--extensions 50] [--kills 10] [--idle-seconds 10] [--json]`
starts a real supervisor in a temporary folder and prints what it measured.
"""
from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import click
import orjson
import psutil

from audiogw.client.ctl import request
from audiogw.shared.net import free_port_block




def _first_frame_after(port: int, timeout: float) -> tuple[float | None, int]:
    """Seconds until a fresh call on ``port`` gets its first frame; and connections refused meanwhile."""
    refused = 0
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
                sock.sendall(b"\x01\x00\x10" + uuid.uuid4().bytes)
                sock.settimeout(timeout)
                if len(sock.recv(3)) == 3:
                    return time.monotonic() - start, refused
        except ConnectionRefusedError:
            refused += 1
        except OSError:
            pass
    return None, refused


def _scrape_times(log_path: Path, scrapes: int = 20) -> dict:
    """Time full /metrics scrapes (what Prometheus pays) against the running supervisor."""
    import re
    import urllib.request

    match = re.search(r"metrics listening on (http://\S+/metrics)", log_path.read_text(errors="replace"))
    if match is None:
        return {"error": "no metrics line in the supervisor log"}
    times, size = [], 0
    for _ in range(scrapes):
        start = time.monotonic()
        with urllib.request.urlopen(match.group(1), timeout=10) as response:
            size = len(response.read())
        times.append(time.monotonic() - start)
    return {"p50": statistics.median(times) * 1000, "max": max(times) * 1000, "bytes": size}


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


@click.command()
@click.option("--extensions", default=50, show_default=True)
@click.option("--kills", default=10, show_default=True)
@click.option("--idle-seconds", default=10.0, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def main(extensions: int, kills: int, idle_seconds: float, as_json: bool) -> None:
    folder = Path(tempfile.mkdtemp(prefix="audiogw-bench-"))
    base = free_port_block(2 * extensions + 10)
    (folder / "audiogw.toml").write_text(
        "[supervisor]\ncontrol = \"ipc://run/control.sock\"\nmetrics = \"127.0.0.1:0\"\nstate_dir = \"state\"\n"
        f"[audiosocket]\nbind = \"127.0.0.1\"\nport_range = [{base}, {base + 2 * extensions + 9}]\n"
    )
    endpoint = f"ipc://{folder}/run/control.sock"
    log = open(folder / "supervisor.log", "wb")
    supervisor = subprocess.Popen(
        [sys.executable, "-c", "from audiogw.supervisor.cli import main; main()", "start", "--config", str(folder / "audiogw.toml")],
        stdout=log, stderr=log, cwd=folder,
    )
    report: dict = {"extensions": extensions}
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                request(endpoint, "list", {}, timeout=0.5)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise SystemExit("supervisor did not answer")
        add_times, ports = [], []
        for index in range(extensions):
            start = time.monotonic()
            row = request(endpoint, "add-extension", {"id": str(2000 + index)}, timeout=10)
            for port in (row["ia_port"], row["retorno_port"]):
                _first_frame_after(port, 5)
            add_times.append(time.monotonic() - start)
            ports.append(row["ia_port"])
        report["add_extension_ms"] = {"p50": statistics.median(add_times) * 1000, "p95": _percentile(add_times, 0.95) * 1000,
                                      "max": max(add_times) * 1000}
        rows = request(endpoint, "list", {}, timeout=5)
        pids = [row["pid"] for row in rows if row["pid"]]
        uss = [psutil.Process(pid).memory_full_info().uss for pid in pids]
        rss = [psutil.Process(pid).memory_info().rss for pid in pids]
        report["worker_uss_mb"] = {"median": statistics.median(uss) / 2**20, "max": max(uss) / 2**20}
        report["worker_rss_mb"] = {"median": statistics.median(rss) / 2**20}
        report["scrape_ms"] = _scrape_times(folder / "supervisor.log")
        process = psutil.Process(supervisor.pid)
        time.sleep(1.0)
        before = process.cpu_times()
        wall = time.monotonic()
        time.sleep(idle_seconds)
        after = process.cpu_times()
        busy = (after.user - before.user) + (after.system - before.system)
        report["supervisor_idle_cpu_percent"] = 100 * busy / (time.monotonic() - wall)
        recover, refused_total = [], 0
        for index in range(kills):
            row = rows[index % len(rows)]
            os.kill(row["pid"], signal.SIGKILL)
            seconds, refused = _first_frame_after(row["ia_port"], 5)
            refused_total += refused
            if seconds is not None:
                recover.append(seconds)
            time.sleep(0.5)
            rows = request(endpoint, "list", {}, timeout=5)
        report["kill9_to_serving_ms"] = {"p50": statistics.median(recover) * 1000 if recover else None,
                                         "max": max(recover) * 1000 if recover else None,
                                         "recovered": len(recover), "kills": kills, "refused_connections": refused_total}
    finally:
        supervisor.send_signal(signal.SIGTERM)
        try:
            supervisor.wait(30)
        except subprocess.TimeoutExpired:
            supervisor.kill()
    if as_json:
        click.echo(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
        return
    add = report["add_extension_ms"]
    kill = report["kill9_to_serving_ms"]
    click.echo(f"extensions: {extensions}")
    click.echo(f"add-extension to both ports answering: p50 {add['p50']:.1f} ms, p95 {add['p95']:.1f} ms, max {add['max']:.1f} ms (target p50 <= 100 ms)")
    click.echo(f"kill -9 to serving again: p50 {kill['p50']:.1f} ms, max {kill['max']:.1f} ms, {kill['recovered']}/{kill['kills']} recovered, "
               f"{kill['refused_connections']} refused connections (target <= 500 ms, 0 refused)")
    click.echo(f"worker USS: median {report['worker_uss_mb']['median']:.1f} MB, max {report['worker_uss_mb']['max']:.1f} MB "
               f"(RSS median {report['worker_rss_mb']['median']:.1f} MB) (target USS <= 10 MB)")
    scrape = report["scrape_ms"]
    if "p50" in scrape:
        click.echo(f"/metrics scrape: p50 {scrape['p50']:.1f} ms, max {scrape['max']:.1f} ms, {scrape['bytes']} bytes (target <= 50 ms)")
    click.echo(f"supervisor CPU while idle: {report['supervisor_idle_cpu_percent']:.2f} % of a core over {idle_seconds:g} s (target <= 1 %)")


if __name__ == "__main__":
    main()
