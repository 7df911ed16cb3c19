"""Supervisor benchmark: add-extension latency, restart after kill -9, worker memory, idle CPU,
/metrics scrape time and whether scraping disturbs the audio.

`python -m audiogw.bench.supervisor [--extensions 50] [--kills 10] [--idle-seconds 10] [--json]`
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
from audiogw.shared.pacing import pacing_stats_many

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"




def first_frame_after(port: int, timeout: float) -> tuple[float | None, int]:
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


def _scrape(url: str, accept: str | None = None) -> int:
    import urllib.request

    request_ = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request_, timeout=10) as response:
        return len(response.read())


def _scrape_times(url: str, accept: str | None = None, scrapes: int = 20) -> dict:
    """Time full /metrics scrapes (what Prometheus pays) against the running supervisor."""
    times, size = [], 0
    for _ in range(scrapes):
        start = time.monotonic()
        size = _scrape(url, accept)
        times.append(time.monotonic() - start)
    return {"p50": statistics.median(times) * 1000, "max": max(times) * 1000, "bytes": size}


def _pacing_while_scraping(url: str, ports: list[int], seconds: float, interval: float) -> dict:
    """The same calls twice: once alone, once while /metrics is scraped every ``interval`` s
    (0: back to back, which on a 2-core machine takes a core for the supervisor and
    most of another for this client's own HTTP parsing)."""
    import asyncio
    import threading

    from audiogw.client.softphone import place_call
    from audiogw.shared.wav import tone

    source = tone(440, seconds, 8000)

    async def calls():
        return await asyncio.gather(*(place_call("127.0.0.1", port, source=source, seconds=seconds, record=False)
                                      for port in ports))

    report = {}
    for label, scraping in (("quiet", False), ("scraping", True)):
        stop, scrapes = threading.Event(), [0]

        def scrape_forever() -> None:
            while not stop.is_set():
                _scrape(url, OPENMETRICS)
                scrapes[0] += 1
                stop.wait(interval)

        scraper = threading.Thread(target=scrape_forever, daemon=True) if scraping else None
        if scraper is not None:
            scraper.start()
        results = asyncio.run(calls())
        stop.set()
        if scraper is not None:
            scraper.join(15)
        stats = pacing_stats_many([result.arrivals for result in results])
        report[label] = {**stats.to_dict(), "calls": len(results), "scrapes": scrapes[0]}
    return report


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


@click.command()
@click.option("--extensions", default=50, show_default=True)
@click.option("--kills", default=10, show_default=True)
@click.option("--idle-seconds", default=10.0, show_default=True)
@click.option("--pacing-calls", default=20, show_default=True,
              help="Calls (one per extension) placed with and without back-to-back scrapes; 0 skips.")
@click.option("--pacing-seconds", default=10.0, show_default=True)
@click.option("--scrape-interval", default=1.0, show_default=True,
              help="Seconds between scrapes during the pacing run (Prometheus' default is 15-60 s; 0: back to back).")
@click.option("--json", "as_json", is_flag=True)
def main(extensions: int, kills: int, idle_seconds: float, pacing_calls: int, pacing_seconds: float,
         scrape_interval: float, as_json: bool) -> None:
    folder = Path(tempfile.mkdtemp(prefix="audiogw-bench-"))
    base = free_port_block(2 * extensions + 11)
    metrics_port = base + 2 * extensions + 10  # just past the extensions' port_range: the bench knows its address
    (folder / "audiogw.toml").write_text(
        f"[supervisor]\ncontrol = \"ipc://run/control.sock\"\nmetrics = \"127.0.0.1:{metrics_port}\"\n"
        "state_dir = \"state\"\n"
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
                first_frame_after(port, 5)
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
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        report["scrape_ms"] = _scrape_times(url)
        report["scrape_openmetrics_ms"] = _scrape_times(url, OPENMETRICS)
        if pacing_calls:
            report["pacing"] = _pacing_while_scraping(url, ports[:pacing_calls], pacing_seconds, scrape_interval)
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
            seconds, refused = first_frame_after(row["ia_port"], 5)
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
    if kill["kills"]:  # --kills 0 measures no restart
        click.echo(f"kill -9 to serving again: p50 {kill['p50']:.1f} ms, max {kill['max']:.1f} ms, {kill['recovered']}/{kill['kills']} recovered, "
                   f"{kill['refused_connections']} refused connections (target <= 500 ms, 0 refused)")
    click.echo(f"worker USS: median {report['worker_uss_mb']['median']:.1f} MB, max {report['worker_uss_mb']['max']:.1f} MB "
               f"(RSS median {report['worker_rss_mb']['median']:.1f} MB) (target USS <= 10 MB)")
    for key, name in (("scrape_ms", "text"), ("scrape_openmetrics_ms", "OpenMetrics")):
        scrape = report[key]
        click.echo(f"/metrics scrape ({name}): p50 {scrape['p50']:.1f} ms, max {scrape['max']:.1f} ms, "
                   f"{scrape['bytes']} bytes (target <= 50 ms)")
    for label, pacing in (report.get("pacing") or {}).items():
        click.echo(f"pacing of {pacing['calls']} calls, {label:8s}: p50 {pacing['p50_deviation_ms']:.3f} ms, "
                   f"p99 {pacing['p99_deviation_ms']:.3f} ms, largest gap {pacing['max_gap_ms']:.1f} ms, "
                   f"gaps over 40 ms: {pacing['gaps_over_40ms']} ({pacing['scrapes']} scrapes meanwhile, "
                   f"one every {scrape_interval:g} s)")
    click.echo(f"supervisor CPU while idle: {report['supervisor_idle_cpu_percent']:.2f} % of a core over {idle_seconds:g} s (target <= 1 %)")


if __name__ == "__main__":
    main()
