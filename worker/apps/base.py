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
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping

from audiogw.shared.audiosocket import AUDIO_RATES

if TYPE_CHECKING:
    from audiogw.worker.leg import Leg
    from audiogw.worker.stats import WorkerStats


class AppOptionError(ValueError):
    """An app option is missing, unknown or malformed."""


# Options every app takes: they shape the legs, not the conversation.
# ``rate``: the AudioSocket rate the legs answer at. "auto" starts at 8 kHz (the
# dialplan app's only rate) and follows the first inbound audio frame; a known
# rate (the channel driver's ``c(slin16)``) sends its first frame on the first tick.
COMMON_OPTIONS: Mapping[str, tuple[Any, Any]] = {"rate": ((str, int), "auto")}


def leg_rate(value: Any) -> int:
    """The ``rate`` option as Hz, 0 for "auto"; AppOptionError names the allowed values."""
    if value == "auto":
        return 0
    if isinstance(value, int) and not isinstance(value, bool) and value in AUDIO_RATES.values():
        return value
    allowed = ", ".join(str(rate) for rate in AUDIO_RATES.values())
    raise AppOptionError(f"option rate must be \"auto\" or one of {allowed}, not {value!r}")


@dataclass
class AppContext:
    extension: str
    options: Mapping[str, Any]
    base_dir: str = "."
    counters: Counter = field(default_factory=Counter)
    stats: "WorkerStats | None" = None  # the worker's counters, set before App.start()

    async def run_blocking(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, functools.partial(function, *args, **kwargs))


_COROUTINE_HOOKS = ("start", "run_leg", "close")


class App:
    name: ClassVar[str] = ""
    # Option name -> (type or tuple of types, default). Unknown options are refused.
    options_schema: ClassVar[Mapping[str, tuple[Any, Any]]] = {}
    required_options: ClassVar[frozenset[str]] = frozenset()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for hook in _COROUTINE_HOOKS:
            if not inspect.iscoroutinefunction(getattr(cls, hook)):
                raise TypeError(f"{cls.__name__}.{hook} must be 'async def': app code runs on the audio loop")

    def __init__(self, context: AppContext) -> None:
        self.context = context
        self.options = self.validate_options(context.options)
        self.rate = leg_rate(self.options["rate"])  # Hz the legs start at; 0: learn it (auto)

    @classmethod
    def validate_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        """Defaults filled in; unknown keys, missing required keys and wrong types refused."""
        schema = {**COMMON_OPTIONS, **cls.options_schema}
        unknown = sorted(set(options) - set(schema))
        if unknown:
            known = ", ".join(sorted(schema))
            raise AppOptionError(f"app {cls.name!r}: unknown option(s) {', '.join(unknown)} (known: {known})")
        missing = sorted(cls.required_options - set(options))
        if missing:
            raise AppOptionError(f"app {cls.name!r}: missing option(s) {', '.join(missing)}")
        result: dict[str, Any] = {}
        for key, (types, default) in schema.items():
            value = options.get(key, default)
            if key in options and not _type_ok(value, types):
                raise AppOptionError(f"app {cls.name!r}: option {key} has the wrong type ({type(value).__name__})")
            result[key] = value
        leg_rate(result["rate"])  # refused by the supervisor too, before anything starts
        return result

    async def start(self) -> None:
        """Once per worker, before the sockets serve (load files, open pools)."""

    async def run_leg(self, leg: "Leg") -> None:
        raise NotImplementedError

    async def close(self) -> None:
        """Once per worker, on shutdown."""


def _type_ok(value: Any, types: Any) -> bool:
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        return False
    return isinstance(value, types)
