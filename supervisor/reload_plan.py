"""What a reload does, decided before anything is touched: a pure function of two configs.

:func:`plan_reload` compares the running config with the file just read and the
extensions the supervisor runs, and returns a :class:`ReloadPlan`: the extensions
to add, remove, replace (their worker restarts) or leave alone, and every changed
``[supervisor]``/``[audiosocket]`` key sorted by its declared reload policy
(``shared/settings.py``):

- ``live``: in :attr:`ReloadPlan.config` and applied to every extension at once
  (the restart policy goes to each lifecycle, so ``/healthz`` and the lifecycle
  judge a worker by the same ``heartbeat_timeout``);
- ``new_workers``: in :attr:`ReloadPlan.config`, so the supervisor and every worker
  started afterwards use it; the running workers listed in ``keep_old`` keep the
  old value until they restart;
- ``restart``: kept at its running value in :attr:`ReloadPlan.config` (the control
  socket, the metrics listener, the state folder, the bound ports stay as they
  are), so nothing reads a value that is not in effect.

No I/O, no clock: ``Supervisor.reload`` carries the plan out, the tests call it directly.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from audiogw.shared.config import Config, ConfigError, ExtensionConfig, reserved_ports
from audiogw.shared.settings import RELOAD_NOTES, SECTIONS, Reload, Setting

__all__ = ["SettingChange", "ReloadPlan", "plan_reload", "hidden_by_overrides"]


@dataclass(frozen=True, slots=True)
class SettingChange:
    """One key whose value differs between the running config and the file."""

    setting: Setting
    old: tuple[Any, ...]
    new: tuple[Any, ...]

    @property
    def key(self) -> str:
        return self.setting.key


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    config: Config  # what the supervisor runs with afterwards (restart keys at their running values)
    add: tuple[ExtensionConfig, ...]
    remove: tuple[str, ...]
    replace: tuple[ExtensionConfig, ...]  # same id, new config: its worker restarts
    unchanged: tuple[str, ...]
    live: tuple[SettingChange, ...]
    new_workers: tuple[SettingChange, ...]
    restart: tuple[SettingChange, ...]
    keep_old: tuple[str, ...]  # running extensions whose workers keep the old new_workers values
    overridden: tuple[tuple[str, str], ...] = ()  # (id, reason): a runtime change hides the file's definition

    def result(self) -> dict[str, Any]:
        """The ``ctl reload`` reply (``Reloaded`` in shared/commands.py)."""
        return {
            "added": [extension.id for extension in self.add],
            "removed": list(self.remove),
            "changed": [extension.id for extension in self.replace],
            "unchanged": list(self.unchanged),
            "overridden": [{"id": extension_id, "reason": reason} for extension_id, reason in self.overridden],
        }

    def log_lines(self) -> list[tuple[int, str]]:
        """(level, message) for every changed key, in declaration order: what the operator
        must know about values that are not (yet) in effect everywhere."""
        lines: list[tuple[int, str]] = []
        for change in sorted((*self.live, *self.new_workers, *self.restart), key=_declaration_order):
            policy = change.setting.reload
            if policy is Reload.RESTART:
                lines.append((logging.WARNING, f"reload: {change.key} changed; it takes effect at the next start"))
            elif policy is Reload.NEW_WORKERS and self.keep_old:
                lines.append((logging.WARNING, f"reload: {change.key} changed; {RELOAD_NOTES[policy]}"))
            else:
                lines.append((logging.INFO, f"reload: {change.key} changed; applied"))
        lines.extend((logging.WARNING, f"reload: extension {extension_id}: {reason}")
                     for extension_id, reason in self.overridden)
        return lines


_ORDER = {setting.key: index for index, setting in enumerate(s for settings in SECTIONS.values() for s in settings)}


def _declaration_order(change: SettingChange) -> int:
    return _ORDER[change.key]


def _by_id(extensions: Iterable[ExtensionConfig]) -> dict[str, ExtensionConfig]:
    return {extension.id: extension for extension in extensions}


def _changes(old: Config, new: Config) -> list[SettingChange]:
    changes = []
    for section, settings in SECTIONS.items():
        old_section, new_section = getattr(old, section), getattr(new, section)
        for setting in settings:
            before, after = setting.read(old_section), setting.read(new_section)
            if before != after:
                changes.append(SettingChange(setting, before, after))
    return changes


def _effective(old: Config, new: Config, restart: Iterable[SettingChange]) -> Config:
    """The new config with every restart key put back to its running value."""
    kept: dict[str, dict[str, Any]] = {section: {} for section in SECTIONS}
    for change in restart:
        kept[change.setting.section].update(zip((name for name, _ in change.setting.fields), change.old))
    sections = {section: dataclasses.replace(getattr(new, section), **values) for section, values in kept.items()}
    return dataclasses.replace(new, **sections)


def _extension_key(config: Config, extension: ExtensionConfig, name: str) -> str:
    for index, configured in enumerate(config.extensions):
        if configured.id == extension.id:
            return f"extension[{index}].{name}"
    return f"extension {extension.id!r} {name}"


def _check_reserved(config: Config, extensions: Iterable[ExtensionConfig]) -> None:
    """A port still held by a listener whose move waits for a restart (metrics, control,
    demo agent) cannot go to an extension now; the file alone could not tell."""
    reserved = reserved_ports(config.supervisor, config.audiosocket, config.path)
    for extension in extensions:
        for kind, port in extension.ports().items():
            if port in reserved:
                raise ConfigError(config.path, _extension_key(config, extension, f"{kind}_port"),
                                  f"port {port} is also {reserved[port]} until the supervisor restarts")


def _check_heartbeat(config: Config, old: Config, keep_old: tuple[str, ...]) -> None:
    """Workers that keep their heartbeat_interval must not look hung under the new timeout."""
    interval = old.supervisor.heartbeat_interval
    timeout = config.supervisor.heartbeat_timeout
    if keep_old and timeout <= interval:
        raise ConfigError(
            config.path, "supervisor.heartbeat_timeout",
            f"{timeout:g} s must be longer than the heartbeat_interval the running workers keep "
            f"({interval:g} s); reload a longer timeout first, then lower it once they restarted",
        )


def hidden_by_overrides(new: Config,
                        overrides: Mapping[str, ExtensionConfig | None]) -> tuple[tuple[str, str], ...]:
    """(id, reason) for each extension whose definition in the file is not what runs because
    of a runtime change (``ctl add-extension`` / ``remove-extension``): said, never silent."""
    hidden = []
    for extension_id, runtime in overrides.items():
        configured = new.extension(extension_id)
        if configured is None or configured == runtime:
            continue
        if runtime is None:
            reason = ("defined in the file but removed at run time; it stays removed until "
                      f"`ctl reset {extension_id}`")
        else:
            reason = (f"defined in the file and at run time; the runtime definition wins until "
                      f"`ctl reset {extension_id}`")
        hidden.append((extension_id, reason))
    return tuple(sorted(hidden))


def plan_reload(
    old: Config,
    new: Config,
    running: Mapping[str, ExtensionConfig],
    effective: Callable[[Iterable[ExtensionConfig]], Mapping[str, ExtensionConfig]] = _by_id,
    overrides: Mapping[str, ExtensionConfig | None] | None = None,
) -> ReloadPlan:
    """Decide a reload. ``running``: the extensions the supervisor has (id -> the config
    its worker runs). ``effective``: the extensions to run for a config's list (the
    supervisor passes its store's, which applies ``ctl add/remove-extension``).
    ``overrides``: those runtime changes (id -> runtime definition, None if removed),
    to report where one hides the file's definition (:func:`hidden_by_overrides`).

    An extension is removed only if the old config wanted it (one the supervisor runs
    for another reason stays). Raises :class:`ConfigError` when the plan cannot be
    carried out as a whole; nothing has been changed then.
    """
    old_wanted = effective(old.extensions)
    wanted = effective(new.extensions)
    remove = tuple(extension_id for extension_id in running
                   if extension_id not in wanted and extension_id in old_wanted)
    add, replace, unchanged = [], [], []
    for extension_id, extension in wanted.items():
        current = running.get(extension_id)
        if current is None:
            add.append(extension)
        elif current != extension:
            replace.append(extension)
        else:
            unchanged.append(extension_id)

    changes = _changes(old, new)
    by_policy = {policy: tuple(c for c in changes if c.setting.reload is policy) for policy in Reload}
    config = _effective(old, new, by_policy[Reload.RESTART])
    # Workers that go on running without a restart: the ones not replaced or removed.
    restarting = set(remove) | {extension.id for extension in replace}
    kept_running = tuple(extension_id for extension_id in running if extension_id not in restarting)
    keep_old = kept_running if by_policy[Reload.NEW_WORKERS] else ()
    if any(change.key == "supervisor.heartbeat_interval" for change in by_policy[Reload.NEW_WORKERS]):
        _check_heartbeat(config, old, keep_old)
    if by_policy[Reload.RESTART]:
        _check_reserved(config, (*add, *replace))
    return ReloadPlan(
        config=config,
        add=tuple(add),
        remove=remove,
        replace=tuple(replace),
        unchanged=tuple(unchanged),
        live=by_policy[Reload.LIVE],
        new_workers=by_policy[Reload.NEW_WORKERS],
        restart=by_policy[Reload.RESTART],
        keep_old=keep_old,
        overridden=hidden_by_overrides(new, overrides or {}),
    )
