"""veer's proxy: the data plane, the controller and what they stand on.

The modules in ``HOT_PATH`` are what a request passes through. ``setup.py`` compiles them
with mypyc where it can (``pip install .``); their source stays the pure-Python fallback.
``VEER_PURE_PYTHON=1`` in the environment runs the pure modules even where compiled ones
are installed (tests and benchmarks compare the two from one tree). ``build()`` says
which is running.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

# setup.py reads this tuple from the source (ast), so it must stay a literal.
HOT_PATH = (
    "proxy.config.model",
    "proxy.wire.h1", "proxy.wire.ends", "proxy.wire.errors", "proxy.wire.flow",
    "proxy.routing.hashing", "proxy.routing.keys", "proxy.routing.live",
    "proxy.routing.router", "proxy.routing.variant",
    "proxy.telemetry.latency", "proxy.telemetry.recorder", "proxy.telemetry.slots",
    "proxy.upstream.acquire", "proxy.upstream.balancer", "proxy.upstream.connection",
    "proxy.upstream.endpoint", "proxy.upstream.health", "proxy.upstream.idle",
    "proxy.upstream.least_outstanding",
    "proxy.upstream.round_robin",
    "proxy.http.exchange", "proxy.http.fairness", "proxy.http.head_rules",
    "proxy.http.heads", "proxy.http.inbound", "proxy.http.plane", "proxy.http.request",
    "proxy.upstream.pools",
)
PURE_ENV = "VEER_PURE_PYTHON"


class _SourceOnly(importlib.abc.MetaPathFinder):
    """Finds ``proxy.*`` modules by their ``.py`` files only, passing over compiled ones."""

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if not fullname.startswith("proxy.") or path is None:
            return None
        name = fullname.rpartition(".")[2]
        for entry in path:
            package = Path(entry, name, "__init__.py")
            if package.is_file():
                return importlib.util.spec_from_file_location(
                    fullname, package, submodule_search_locations=[str(package.parent)])
            module = Path(entry, f"{name}.py")
            if module.is_file():
                return importlib.util.spec_from_file_location(fullname, module)
        return None


if os.environ.get(PURE_ENV) == "1" and not any(
        isinstance(f, _SourceOnly) for f in sys.meta_path):
    sys.meta_path.insert(0, _SourceOnly())


def build() -> dict[str, object]:
    """Which build of the hot path this process runs: ``kind`` is ``mypyc`` when every
    ``HOT_PATH`` module is compiled, ``pure`` when none is, ``partial`` otherwise."""
    compiled = [m for m in HOT_PATH if _is_compiled(m)]
    kind = ("mypyc" if len(compiled) == len(HOT_PATH) else "pure" if not compiled
            else "partial")
    return {"kind": kind, "compiled": len(compiled), "modules": len(HOT_PATH),
            "python": ".".join(map(str, sys.version_info[:3]))}


def _is_compiled(module: str) -> bool:
    loaded = sys.modules.get(module)
    spec = loaded.__spec__ if loaded is not None else importlib.util.find_spec(module)
    return spec is not None and isinstance(spec.loader, importlib.machinery.ExtensionFileLoader)


def describe_build() -> str:
    """How ``veer --version`` says it: ``compiled with mypyc (29/29 modules, CPython
    3.11.7)`` or ``pure Python (CPython 3.11.7)``."""
    info = build()
    if info["kind"] == "pure":
        return f"pure Python (CPython {info['python']})"
    partly = "partly " if info["kind"] == "partial" else ""
    return (f"{partly}compiled with mypyc ({info['compiled']}/{info['modules']} modules, "
            f"CPython {info['python']})")
