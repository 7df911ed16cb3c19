"""The app registry: every app a worker can run, with its typed option model, declared once.

The supervisor, the config parser and ``audiogw ctl --config`` validate an app's
options here, types *and* meaning (a ``ws://`` url, a playable WAV file, numbers
in range), before anything starts or is persisted. So this module imports no
audio stack (numpy, soxr, websockets): the option models are plain msgspec
Structs, and the registry names each app's class as a ``module:Class``
reference that only the worker imports (:func:`audiogw.worker.apps.create_app`).

An app outside the registry is named by its reference (``--app
audiogw.bench.stall_app:StallApp``, as gunicorn names an app); its module is
imported to find the class and its ``Options`` model, so it must import cheaply.
"""
from __future__ import annotations

import difflib
import functools
import importlib
import re
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import msgspec

from audiogw.shared.audiosocket import AUDIO_RATES
from audiogw.shared.media_format import format_problem
from audiogw.shared.wav_header import WavError, probe_wav

__all__ = [
    "AppOptionError",
    "AppOptions",
    "PlaybackOptions",
    "AgentOptions",
    "AppDeclaration",
    "AppSpec",
    "BUILTIN_APPS",
    "APP_REFERENCE",
    "app_spec",
    "leg_rate",
    "parse_app_options",
]


class AppOptionError(ValueError):
    """An app or one of its options is refused; ``option`` names the option (None: the app itself)."""

    def __init__(self, message: str, option: str | None = None) -> None:
        super().__init__(message)
        self.option = option


def _refused(option: str, why: str) -> AppOptionError:
    return AppOptionError(f"option {option} {why}", option)


def leg_rate(value: Any) -> int:
    """The ``rate`` option as Hz, 0 for "auto"; AppOptionError names the allowed values."""
    if value == "auto":
        return 0
    if isinstance(value, int) and not isinstance(value, bool) and value in AUDIO_RATES.values():
        return value
    allowed = ", ".join(str(rate) for rate in AUDIO_RATES.values())
    raise _refused("rate", f"must be \"auto\" or one of {allowed}, not {value!r}")


# -- the option models ----------------------------------------------------------
class AppOptions(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Options every app takes: they shape the legs, not the conversation.

    ``rate``: the AudioSocket rate the legs answer at. "auto" starts at 8 kHz (the
    dialplan app's only rate) and follows the first inbound audio frame; a known
    rate (the channel driver's ``c(slin16)``) sends its first frame on the first tick.
    An app's model subclasses this one: its fields are its options (type and
    default), :meth:`check` what the types cannot say.
    """

    rate: str | int = "auto"

    def check(self, base_dir: str) -> None:
        """Refuse what the types allow but the app cannot use; subclasses call ``super().check``."""
        leg_rate(self.rate)

    @property
    def rate_hz(self) -> int:
        """Hz the legs start at; 0: learn it from the first frame ("auto")."""
        return leg_rate(self.rate)


def _positive(options: AppOptions, *names: str) -> None:
    for name in names:
        value = getattr(options, name)
        if not value > 0:
            raise _refused(name, f"must be greater than 0, not {value:g}")


def _playable(option: str, value: str, base_dir: str) -> str:
    """The WAV file's resolved path, refused unless the worker can read and play it."""
    from audiogw.shared.config import resolve_path  # config imports this module

    path = resolve_path(base_dir, value)
    try:
        probe_wav(path)
    except WavError as error:
        raise _refused(option, f"cannot be used: {error}") from None
    return path


class PlaybackOptions(AppOptions):
    """``file``: the WAV to play (relative: next to the config file); ``loop``: play it again and again."""

    file: str
    loop: bool = False

    def check(self, base_dir: str) -> None:
        super().check(base_dir)
        _playable("file", self.file, base_dir)


class AgentOptions(AppOptions):
    """The agent app's options; their meaning is in :mod:`audiogw.worker.apps.agent`."""

    url: str
    encoding: str = "mulaw"
    media_rate: int = 8000
    connect_timeout: float = 5.0
    headers: dict[str, str] = {}
    barge_in: bool = False
    barge_in_threshold_dbfs: float = -30.0
    fallback: str = ""
    reconnect_max_delay: float = 5.0
    max_buffer_seconds: float = 120.0
    # Pre-roll: agent audio waits until this many ms are queued before it plays (0: at once),
    # so an input-driven stream (one chunk out per chunk in) has a cushion against jitter.
    jitter_ms: int = 0
    # The resident's dial string (e.g. PJSIP/apt1201) that `audiogw.dial` rings through AMI.
    resident: str = ""

    def check(self, base_dir: str) -> None:
        super().check(base_dir)
        if not self.url.startswith(("ws://", "wss://")):
            raise _refused("url", f"{self.url!r} must start with ws:// or wss://")
        problem = format_problem(self.encoding, self.media_rate)
        if problem is not None:
            if problem[0] == "encoding":
                raise AppOptionError(problem[1], "encoding")
            raise _refused("media_rate", f"is wrong for the encoding: {problem[1]}")
        _positive(self, "connect_timeout", "reconnect_max_delay", "max_buffer_seconds")
        if not -90.0 <= self.barge_in_threshold_dbfs <= 0.0:
            raise _refused("barge_in_threshold_dbfs", f"must be between -90 and 0, not {self.barge_in_threshold_dbfs:g}")
        if self.fallback:
            _playable("fallback", self.fallback, base_dir)
        if not 0 <= self.jitter_ms <= 1000:
            raise _refused("jitter_ms", f"must be between 0 and 1000, not {self.jitter_ms}")
        if any(character in self.resident for character in "\r\n,"):
            raise _refused("resident", f"{self.resident!r} must be one dial string (no comma or line break)")


# -- the registry -----------------------------------------------------------------
class AppDeclaration:
    """What an app class declares to the supervisor: its name and option model.

    The worker's :class:`~audiogw.worker.apps.base.App` derives from it, so a
    ``module:Class`` reference is checked here without importing the worker.
    Apps in the registry get their model from their :class:`AppSpec`; an app
    outside it sets ``Options``.
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type[AppOptions]] = AppOptions


@dataclass(frozen=True, slots=True)
class AppSpec:
    """One app: the name it is configured by, its class as ``module:Class``, its option model."""

    name: str
    ref: str
    options: type[AppOptions] = AppOptions

    def load(self) -> type[AppDeclaration]:
        """Import the class (the worker does; the supervisor only for apps outside the registry)."""
        return _load_class(self.ref)


BUILTIN_APPS: dict[str, AppSpec] = {spec.name: spec for spec in (
    AppSpec("echo", "audiogw.worker.apps.echo:EchoApp"),
    AppSpec("playback", "audiogw.worker.apps.playback:PlaybackApp", PlaybackOptions),
    AppSpec("bridge", "audiogw.worker.apps.bridge:BridgeApp"),
    AppSpec("agent", "audiogw.worker.apps.agent:AgentApp", AgentOptions),
)}

_IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]*"
APP_REFERENCE: re.Pattern[str] = re.compile(rf"\A{_IDENTIFIER}(\.{_IDENTIFIER})*:{_IDENTIFIER}(\.{_IDENTIFIER})*\Z")


def app_spec(app: str) -> AppSpec:
    """The registry's entry for a name, or the spec of a ``module:Class`` reference.

    A reference is imported and must name an App subclass; AppOptionError says why not.
    """
    spec = BUILTIN_APPS.get(app)
    if spec is not None:
        return spec
    if not isinstance(app, str) or not APP_REFERENCE.match(app):
        known = ", ".join(BUILTIN_APPS)
        reason = f"unknown app {app!r}; known apps: {known} (or a module:Class reference)"
        close = difflib.get_close_matches(app, BUILTIN_APPS, n=1, cutoff=0.6) if isinstance(app, str) else []
        if close:
            reason = f"unknown app {app!r}; did you mean {close[0]!r}? (known apps: {known})"
        raise AppOptionError(reason)
    for builtin in BUILTIN_APPS.values():
        if builtin.ref == app:
            return builtin
    app_class = _load_class(app)
    return AppSpec(app, app, app_class.Options)


def _load_class(ref: str) -> type[AppDeclaration]:
    module_name, _, attribute = ref.partition(":")
    try:
        found: Any = importlib.import_module(module_name)
    except ImportError as error:
        raise AppOptionError(f"app {ref!r}: cannot import module {module_name} ({error})") from None
    except Exception as error:  # the module itself failed: say how, not a traceback
        raise AppOptionError(f"app {ref!r}: importing {module_name} failed: {type(error).__name__}: {error}") from None
    for part in attribute.split("."):
        found = getattr(found, part, None)
        if found is None:
            raise AppOptionError(f"app {ref!r}: module {module_name} has no {attribute}")
    if not (isinstance(found, type) and issubclass(found, AppDeclaration)):
        raise AppOptionError(f"app {ref!r}: {attribute} is not an App subclass (audiogw.worker.apps.base.App)")
    if not (isinstance(found.Options, type) and issubclass(found.Options, AppOptions)):
        raise AppOptionError(f"app {ref!r}: {attribute}.Options is not an AppOptions subclass")
    return found


@functools.cache
def _option_names(model: type[AppOptions]) -> tuple[frozenset[str], frozenset[str]]:
    """(every option, the required ones); cached: msgspec resolves the type hints on each call."""
    fields = msgspec.structs.fields(model)
    return frozenset(field.name for field in fields), frozenset(field.name for field in fields if field.required)


_WRONG_TYPE = re.compile(r"- at `\$\.(?P<option>[A-Za-z0-9_]+)")


def parse_app_options(app: str, options: Mapping[str, Any], base_dir: str) -> AppOptions:
    """The app's typed options, checked for types and meaning; AppOptionError names the option and why.

    The one validation every path runs (config file, state file, ``add-extension``,
    ``reload``, and the worker before it builds the app); ``base_dir`` is where
    relative file names resolve (the config file's folder).
    """
    spec = app_spec(app)
    model = spec.options
    label = f"app {spec.name!r}"
    names, required = _option_names(model)
    unknown = sorted(set(options) - names)
    if unknown:
        raise AppOptionError(f"{label}: unknown option(s) {', '.join(unknown)} (known: {', '.join(sorted(names))})",
                             unknown[0])
    missing = sorted(required - set(options))
    if missing:
        raise AppOptionError(f"{label}: missing option(s) {', '.join(missing)}", missing[0])
    try:
        typed = msgspec.convert(dict(options), model)
    except msgspec.ValidationError as error:
        match = _WRONG_TYPE.search(str(error))
        option = match["option"] if match else None
        if option is None:
            raise AppOptionError(f"{label}: {error}") from None
        got = type(options.get(option)).__name__
        raise AppOptionError(f"{label}: option {option} has the wrong type ({got}): {error}", option) from None
    try:
        typed.check(base_dir)
    except AppOptionError as error:
        raise AppOptionError(f"{label}: {error}", error.option) from None
    return typed
