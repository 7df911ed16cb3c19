"""Small helpers for the supervisor's own asyncio tasks."""
from __future__ import annotations

import asyncio

__all__ = ["cancel_and_wait"]


async def cancel_and_wait(task: asyncio.Task | None) -> None:
    """Cancel ``task`` (None or done: nothing) and wait until it has ended; how it ended is its own business
    (a stop must not fail because the task it ends failed or was cancelled)."""
    if task is None or task.done():
        return
    task.cancel()
    try:
        await task
    except (asyncio.CancelledError, Exception):
        pass
