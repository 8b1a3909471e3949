"""Builds veer's hot path with mypyc, and falls back to pure Python where it cannot.

The modules in ``proxy.HOT_PATH`` (proxy/__init__.py) become C extensions next to their
sources; every other module, and the same modules wherever no C compiler or mypyc is
present, stay pure Python. The source is the same either way.

    pip install .                      compiled where it can be, else pure (says which)
    VEER_BUILD=pure pip install .      pure Python, no compiler needed
    VEER_BUILD=mypyc pip install .     compiled, or the install fails
"""

from __future__ import annotations

import ast
import os
import sys
from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext
from setuptools.command.editable_wheel import editable_wheel

ROOT = Path(__file__).resolve().parent
MODE = os.environ.get("VEER_BUILD", "auto")


def hot_path() -> list[str]:
    """The source files to compile: ``HOT_PATH``, read from the source (the build
    environment has none of veer's dependencies to import it with)."""
    tree = ast.parse((ROOT / "proxy" / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name) and node.targets[0].id == "HOT_PATH"):
            return [m.replace(".", "/") + ".py" for m in ast.literal_eval(node.value)]
    raise SystemExit("setup.py: proxy/__init__.py has no HOT_PATH")


class OptionalBuildExt(build_ext):
    """In ``auto`` mode a failed compile (no compiler, no Python headers) warns and leaves
    the pure modules; in ``mypyc`` mode it fails the install.

    All or nothing: the compiled modules share one library, so after a failure none is
    built further and whatever was built is removed (a compiled module whose library is
    missing would not import)."""

    failed = False

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:
            self._give_up(exc)

    def build_extension(self, ext: Any) -> None:
        if self.failed:
            return
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._give_up(exc)

    def _give_up(self, exc: Exception) -> None:
        if MODE == "mypyc":
            raise exc
        for ext in self.extensions:
            name = self.get_ext_filename(ext.name)  # type: ignore[no-untyped-call]
            (Path(self.build_lib) / name).unlink(missing_ok=True)
        if self.inplace or getattr(self, "editable_mode", False):
            remove_compiled_in_place()  # in place they went next to their sources too
        if not self.failed:
            print(f"veer: compiling the hot path failed ({exc}); installing pure Python",
                  file=sys.stderr)
        self.failed = True

    def get_outputs(self) -> list[str]:
        return [] if self.failed else list(super().get_outputs())

    def copy_extensions_to_source(self) -> None:
        if not self.failed:
            super().copy_extensions_to_source()


def extensions() -> list[Any]:
    if MODE == "pure":
        return []
    if MODE not in ("auto", "mypyc"):
        raise SystemExit(f"VEER_BUILD={MODE!r}: expected auto, mypyc or pure")
    try:
        from mypyc.build import mypycify
    except ImportError:
        if MODE == "mypyc":
            raise
        print("veer: mypyc is not installed; installing pure Python", file=sys.stderr)
        return []
    try:
        # One shared library inside the package (proxy/hot__mypyc.*.so), so that an
        # editable install finds it where it finds the modules.
        return list(mypycify(hot_path(), opt_level=os.environ.get("MYPYC_OPT_LEVEL", "3"),
                             group_name="proxy.hot"))
    except (Exception, SystemExit) as exc:  # mypyc exits on a type error it finds
        if MODE == "mypyc":
            raise
        print(f"veer: mypyc cannot compile the hot path ({exc}); installing pure Python",
              file=sys.stderr)
        return []


def remove_compiled_in_place() -> None:
    """Every compiled module next to the sources, where an editable install puts them."""
    for built in (ROOT / "proxy").rglob("*.so"):
        built.unlink()


class CleanEditable(editable_wheel):
    """An editable install starts from the sources alone: what an earlier one compiled in
    place goes first, so that a pure build (or a module no longer in HOT_PATH) leaves no
    compiled module to shadow its source."""

    def run(self) -> None:
        remove_compiled_in_place()
        super().run()


setup(ext_modules=extensions(),
      cmdclass={"build_ext": OptionalBuildExt, "editable_wheel": CleanEditable})
