"""`python -m audiogw.shared.selfcheck`: import every audiogw module (checks a built wheel is whole)."""
from __future__ import annotations

import importlib
import importlib.resources
import importlib.util
import pkgutil
import sys

PACKAGES = ("audiogw.shared", "audiogw.worker", "audiogw.worker.apps", "audiogw.supervisor", "audiogw.client",
            "audiogw.bench")
FORBIDDEN_TOP_LEVEL = ("supervisor", "worker", "shared", "client", "bench")
DATA_FILES = ("greeting.wav", "confirm.wav")


def main() -> int:
    imported = []
    for package_name in PACKAGES:
        package = importlib.import_module(package_name)
        for module in pkgutil.iter_modules(package.__path__, package_name + "."):
            if module.name.endswith("__main__"):
                continue
            importlib.import_module(module.name)
            imported.append(module.name)
    for name in FORBIDDEN_TOP_LEVEL:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        if spec is not None and "audiogw" in str(spec.origin or spec.submodule_search_locations):
            print(f"audiogw installed a top-level module {name!r}", file=sys.stderr)
            return 1
    # Package data the code opens at run time (the demo agent's prompts).
    prompts = importlib.resources.files("audiogw.client").joinpath("prompts")
    for name in DATA_FILES:
        if not prompts.joinpath(name).is_file():
            print(f"audiogw.client is missing its data file prompts/{name}", file=sys.stderr)
            return 1
    print(f"imported {len(imported)} audiogw modules; data files present: {', '.join(DATA_FILES)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
