"""The interface every app implements, built so an app cannot stall the audio clock by accident.

Every hook is a coroutine (checked when the class is defined); per-frame audio
moves through the leg's buffers, never through app code on the clock's path;
synchronous work goes through ``leg.run_blocking`` / ``context.run_blocking``,
which run it in a thread.
"""
from __future__ import annotations

import asyncio
import functools
import inspect
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

from audiogw.shared.apps import AppDeclaration, AppOptionError, AppOptions, leg_rate

if TYPE_CHECKING:
    from audiogw.worker.calls import CallLink
    from audiogw.worker.leg import Leg
    from audiogw.worker.stats import WorkerStats


@dataclass
class AppContext:
    extension: str
    options: Mapping[str, Any]
    base_dir: str = "."
    counters: Counter = field(default_factory=Counter)
    stats: "WorkerStats | None" = None  # the worker's counters, set before App.start()
    account_sid: str = ""  # `agent.account_sid`: the Twilio accountSid an agent's stream announces
    calls: "CallLink | None" = None  # call control through the supervisor (None: a worker run alone)

    async def run_blocking(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, functools.partial(function, *args, **kwargs))


_COROUTINE_HOOKS = ("start", "run_leg", "close")


class App(AppDeclaration):
    """An app: built by :func:`audiogw.worker.apps.create_app` with its options already
    validated (:func:`audiogw.shared.apps.parse_app_options`) and typed: read them as
    attributes (``self.options.file``), never re-parse them."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for hook in _COROUTINE_HOOKS:
            if not inspect.iscoroutinefunction(getattr(cls, hook)):
                raise TypeError(f"{cls.__name__}.{hook} must be 'async def': app code runs on the audio loop")

    def __init__(self, context: AppContext, options: AppOptions) -> None:
        self.context = context
        self.options = options
        self.rate = options.rate_hz  # Hz the legs start at; 0: learn it (auto)

    async def start(self) -> None:
        """Once per worker, before the sockets serve (load files, open pools)."""

    async def run_leg(self, leg: "Leg") -> None:
        raise NotImplementedError

    async def close(self) -> None:
        """Once per worker, on shutdown."""


__all__ = ["App", "AppContext", "AppOptionError", "AppOptions", "leg_rate"]
