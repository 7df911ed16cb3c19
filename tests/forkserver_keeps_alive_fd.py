"""Preloaded into one test supervisor's forkserver (tests/test_bus.py): its workers keep the
forkserver's "supervisor alive" pipe, as they would on a Python whose multiprocessing renamed
it, so only each worker's own watch of the supervisor's pid can end it after a kill -9."""
import sys

from audiogw.supervisor import zygote

KEPT = "worker kept the forkserver's alive pipe (test)"


def _keep() -> None:
    print(KEPT, file=sys.stderr, flush=True)


zygote._release_forkserver_alive_fd = _keep
