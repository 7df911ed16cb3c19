"""One BLAS thread per audiogw process: set before anything imports numpy.

numpy's OpenBLAS starts a thread per extra CPU when it loads, and those threads
spin for a while after they start. None of that pays here. audiogw's arrays
are one 20 ms frame long, so there is nothing for a thread pool to speed up.
Workers are forked from a zygote that should hold no threads. And a
real-time worker wants every thread under its own policy (see
``worker/realtime.py``). So each entry point calls :func:`single_threaded_blas`
before its first numpy import. A value the operator set wins.
"""
from __future__ import annotations

import os

BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def single_threaded_blas() -> None:
    for name in BLAS_THREAD_VARIABLES:
        os.environ.setdefault(name, "1")
