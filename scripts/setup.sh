#!/usr/bin/env bash
# Install everything into a project-local .venv (reused when it already matches the requirements).
# `scripts/setup.sh test` also installs the test tools and Debian's Chromium for the browser tests.
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-app}"
PY="${PYTHON:-python3}"
reqs=requirements.txt
[ "$mode" = test ] && reqs=requirements-dev.txt

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $($PY --version)"
    "$PY" -m venv .venv
fi
stamp=".venv/.installed-$(cat requirements.txt "$reqs" | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    echo "setup: installing $reqs into .venv (first time: a few minutes, about 6 GB with torch)"
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -r "$reqs"
    touch "$stamp"
fi

if [ "$mode" = test ] && { [ ! -x /usr/bin/chromium ] || ! dpkg -s fonts-noto-color-emoji >/dev/null 2>&1; }; then
    echo "setup: installing Debian's chromium (and an emoji font) for the browser tests"
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q chromium fonts-noto-color-emoji
fi

# The MLPs' training loop in C++ (mtl_core/native/__init__.py): built once per machine and torch version (about
# 20 s), loaded from the cache after that. Without a compiler the Python loop trains instead.
.venv/bin/python -m mtl_core.native || echo "setup: the C++ training loop was not built; the Python loop runs instead"
