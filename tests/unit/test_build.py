"""The hot path's build: the one running is the one expected, and the pure switch works.

``make test`` sets ``VEER_EXPECT_BUILD`` (``mypyc`` for the whole suite, ``pure`` for the
run with ``VEER_PURE_PYTHON=1``), so a compile that silently fell back to pure Python,
or compiled modules that shadow the pure run, fail here rather than pass unnoticed.
"""

from __future__ import annotations

import ast
import importlib
import importlib.machinery
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import proxy

ROOT = Path(__file__).resolve().parents[2]


def expected_build() -> str:
    expected = os.environ.get("VEER_EXPECT_BUILD")
    if expected is None:
        if os.environ.get("CI") == "true":
            pytest.fail("VEER_EXPECT_BUILD is not set under CI=true (make test sets it)")
        pytest.skip("VEER_EXPECT_BUILD is not set (make test sets it to the build it expects)")
    assert expected in ("mypyc", "pure"), f"VEER_EXPECT_BUILD={expected!r}"
    return expected


def test_the_running_hot_path_is_the_expected_build() -> None:
    expected = expected_build()
    modules = [importlib.import_module(m) for m in proxy.HOT_PATH]
    compiled = [m.__name__ for m in modules if m.__spec__ is not None
                and isinstance(m.__spec__.loader, importlib.machinery.ExtensionFileLoader)]
    info = proxy.build()
    assert info["kind"] == expected, (
        f"expected the {expected} build, running {info['kind']} ({len(compiled)} of "
        f"{len(modules)} compiled: {compiled}); rebuild with make clean setup-test")
    assert info["compiled"] == len(compiled)


def test_no_compiled_module_is_older_than_its_source() -> None:
    """An edit that was never compiled would run the old code: make reinstalls on a
    change, and this catches a tree where it did not."""
    expected = expected_build()
    if expected != "mypyc":
        pytest.skip("the pure build runs the sources themselves")
    stale = []
    for name in proxy.HOT_PATH:
        stem = ROOT / name.replace(".", "/")
        # Found by name: mypyc gives some compiled modules a __file__ (and spec origin)
        # under the wrong directory.
        built = [Path(f"{stem}{suffix}") for suffix in importlib.machinery.EXTENSION_SUFFIXES
                 if Path(f"{stem}{suffix}").is_file()]
        assert built, f"{name} has no compiled module next to its source"
        if built[0].stat().st_mtime < stem.with_suffix(".py").stat().st_mtime:
            stale.append(name)
    assert not stale, f"compiled before their source last changed: {stale}; make setup-test"


def test_the_pure_switch_passes_over_compiled_modules() -> None:
    code = ("import proxy, proxy.http.inbound as m; "
            "print(proxy.build()['kind'], m.__file__.endswith('.py'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, check=True,
                         env={**os.environ, proxy.PURE_ENV: "1"})
    assert out.stdout.split() == ["pure", "True"]


def test_setup_compiles_exactly_the_hot_path() -> None:
    """setup.py reads HOT_PATH from the source; every entry is a module file, and the
    proxy modules a request passes through are in it."""
    tree = ast.parse((ROOT / "setup.py").read_text(encoding="utf-8"))
    assert any(isinstance(n, ast.FunctionDef) and n.name == "hot_path" for n in tree.body)
    for name in proxy.HOT_PATH:
        assert (ROOT / (name.replace(".", "/") + ".py")).is_file(), name
    for must in ("proxy.http.inbound", "proxy.http.exchange", "proxy.upstream.connection",
                 "proxy.wire.h1", "proxy.routing.router", "proxy.telemetry.recorder"):
        assert must in proxy.HOT_PATH


def test_version_names_the_build() -> None:
    out = subprocess.run([sys.executable, "-m", "admin.cli", "--version"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60, check=True)
    kind = proxy.build()["kind"]
    words = {"mypyc": "compiled with mypyc", "pure": "pure Python", "partial": "partly"}
    assert out.stdout.startswith("veer ")
    assert words[str(kind)] in out.stdout, out.stdout


def test_install_without_a_c_compiler_falls_back_to_pure_python(tmp_path: Path) -> None:
    """``pip install .`` where nothing can compile: it says why and installs pure Python
    (a wheel with no extension in it), rather than failing. Built from a copy, so that
    the checkout's own compiled modules are left alone."""
    src = tmp_path / "src"
    for name in ("proxy", "admin"):
        shutil.copytree(ROOT / name, src / name,
                        ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    env = {**os.environ, "CC": "/bin/false", "VEER_BUILD": "auto",
           "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps",
                          "--no-build-isolation", "--wheel-dir", str(tmp_path / "wheels"),
                          str(src)], cwd=src, env=env, capture_output=True, text=True,
                         timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "installing pure Python" in out.stdout + out.stderr
    (wheel,) = (tmp_path / "wheels").glob("veer-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
    assert "proxy/http/exchange.py" in names
    assert not [n for n in names if n.endswith(".so")], names
