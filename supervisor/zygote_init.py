"""Imported first in the forkserver (the zygote) only, never in the supervisor: the zygote's own setup.

A stop as systemd sends it with ``KillMode=control-group`` signals every
process of the unit at once. The zygote must outlive its workers: should it
die, multiprocessing reports each worker as exited 255 and the kernel's
parent-death signal SIGKILLs them mid-drain. So it ignores SIGTERM (SIGINT
multiprocessing already ignores) and ends as designed, when the supervisor's
"alive" pipe closes. Each child restores the default at once
(``zygote._worker_entry``) until its loop installs its SIGTERM handler (a drain).
It is also where the zygote takes its process title (the workers take theirs in
worker/main.py).
"""
from __future__ import annotations

import signal

from audiogw.shared.proctitle import ZYGOTE, set_title

signal.signal(signal.SIGTERM, signal.SIG_IGN)
set_title(ZYGOTE)
