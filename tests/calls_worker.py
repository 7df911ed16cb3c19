"""A real worker process started through the WorkerSpec path with a calls endpoint (the supervisor's
calls socket, played by the test), as the supervisor's zygote would start it:
``python tests/calls_worker.py CALLS_ENDPOINT READY_FILE LEG_RECORDS APP KEY=VALUE...``."""
from __future__ import annotations

import os
import sys

from audiogw.shared.config import parse_config, parse_option
from audiogw.shared.net import bind_listener
from audiogw.shared.worker_spec import WorkerSpec
from audiogw.worker.main import run_worker
from audiogw.worker.records import RecordWriter


def main(argv: list[str]) -> int:
    calls_endpoint, ready_file, leg_records, app, *options = argv
    settings = parse_config({"audiosocket": {"bind": "127.0.0.1", "allow": ["127.0.0.0/8"], "realtime_priority": 0}},
                            path=None, base_dir=os.getcwd()).audiosocket
    sockets = {kind: bind_listener("127.0.0.1", 0, settings.listen_backlog) for kind in ("ia", "retorno")}
    spec = WorkerSpec(extension="1201", app=app, settings=settings, options=dict(map(parse_option, options)),
                      base_dir=os.getcwd(), calls_endpoint=calls_endpoint)
    records = RecordWriter(ready_file, leg_records)
    try:
        return run_worker(spec, sockets, records)
    finally:
        records.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
