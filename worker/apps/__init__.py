"""Build the app a worker runs, from the registry (:mod:`audiogw.shared.apps`) or a ``module:Class`` reference.

Importing this package imports no app module: an app outside the registry
imports ``audiogw.worker.apps.base``, and the supervisor checking that app must
not load every built-in app's audio stack (numpy, soxr, websockets) with it.
"""
from __future__ import annotations

from audiogw.shared.apps import AppOptionError, app_spec, parse_app_options
from audiogw.worker.apps.base import App, AppContext


def create_app(app: str, context: AppContext) -> App:
    """The app named ``app`` (a registry name or ``module:Class``), built with its typed options.

    The options are checked by the same function the supervisor ran before it
    persisted them (a header read at most; it also covers ``python -m
    audiogw.worker``, which has no supervisor). AppOptionError names what is wrong.
    """
    spec = app_spec(app)
    app_class = spec.load()
    if not issubclass(app_class, App):
        raise AppOptionError(f"app {app!r}: {spec.ref} is not an App subclass (audiogw.worker.apps.base.App)")
    options = parse_app_options(app, context.options, context.base_dir)
    return app_class(context, options)


__all__ = ["App", "AppContext", "AppOptionError", "create_app"]
