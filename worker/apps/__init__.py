"""The app registry: name -> class, explicit (no import-time discovery)."""
from __future__ import annotations

from audiogw.worker.apps.agent import AgentApp
from audiogw.worker.apps.base import App, AppContext, AppOptionError
from audiogw.worker.apps.bridge import BridgeApp
from audiogw.worker.apps.echo import EchoApp
from audiogw.worker.apps.playback import PlaybackApp
from audiogw.worker.apps.stall import StallApp

APPS: dict[str, type[App]] = {
    EchoApp.name: EchoApp,
    PlaybackApp.name: PlaybackApp,
    BridgeApp.name: BridgeApp,
    AgentApp.name: AgentApp,
    StallApp.name: StallApp,  # fault injection for `audiogw bench`; never in production
}


def create_app(name: str, context: AppContext) -> App:
    """An app instance with validated options; AppOptionError names what is wrong."""
    try:
        app_class = APPS[name]
    except KeyError:
        raise AppOptionError(f"unknown app {name!r} (known: {', '.join(sorted(APPS))})") from None
    return app_class(context)


__all__ = ["APPS", "App", "AppContext", "AppOptionError", "create_app"]
