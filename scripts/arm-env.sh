#!/usr/bin/env bash
# Build (once; idempotent) an aarch64 user-land for running ARM artifacts on an x86-64 host under
# qemu user-mode emulation, with an aarch64 Python and only the light TVM runtime in it:
#   numpy + apache-tvm-ffi (aarch64 wheels) and libtvm_runtime.so taken out of the aarch64
#   apache-tvm wheel -- the same footprint a Raspberry Pi needs. No TVM compiler in the guest.
#
#   scripts/arm-env.sh            build the environment (about 1-2 minutes from scratch), print its env
#   scripts/arm-env.sh run ARGS   run the guest python3.11 with ARGS (the repo on PYTHONPATH)
#   scripts/arm-env.sh check      exit 0 if the environment is built, 1 if not
#
# Cache: $EDGE_SLIM_ARM_ENV, default ~/.cache/edge-slim/arm. Needs root for apt-get (Debian/Ubuntu)
# the first time: qemu-user-static mmdebstrap arch-test (see shared notes: arm-emulation.md).
set -euo pipefail

CACHE="${EDGE_SLIM_ARM_ENV:-$HOME/.cache/edge-slim/arm}"
ROOT="$CACHE/rootfs"
SITE="$CACHE/site"
RT="$CACHE/tvm-runtime"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TVM_VERSION="0.27.0.post1"
FFI_VERSION="0.1.14.post0"
STAMP="$CACHE/ready-$TVM_VERSION-$FFI_VERSION"
PY="${PYTHON:-python3}"
[ -x "$REPO/.venv/bin/python" ] && PY="$REPO/.venv/bin/python"

log() { echo "arm-env: $*" >&2; }

run_guest() {
  QEMU_LD_PREFIX="$ROOT" PYTHONPATH="$SITE:$REPO" EDGE_SLIM_TVM_RUNTIME="$RT/libtvm_runtime.so" \
    PYTHONDONTWRITEBYTECODE=1 exec qemu-aarch64-static "$ROOT/usr/bin/python3.11" "$@"
}

case "${1:-build}" in
  run) shift; [ -f "$STAMP" ] || { log "not built: run scripts/arm-env.sh first"; exit 1; }; run_guest "$@" ;;
  check) [ -f "$STAMP" ] && command -v qemu-aarch64-static >/dev/null; exit $? ;;
  build) ;;
  *) echo "usage: $0 [build|run ARGS...|check]" >&2; exit 2 ;;
esac

if [ -f "$STAMP" ] && command -v qemu-aarch64-static >/dev/null; then
  log "ready in $CACHE"
else
  # 1. host packages
  need=()
  command -v qemu-aarch64-static >/dev/null || need+=(qemu-user-static)
  command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
  command -v arch-test >/dev/null || need+=(arch-test)
  if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      log "installing ${need[*]}"
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    else
      log "missing ${need[*]}: install them (Debian/Ubuntu: sudo apt-get install ${need[*]})"; exit 3
    fi
  fi
  mkdir -p "$CACHE"
  # 2. an arm64 root file system, extracted without running any arm64 code
  if [ ! -x "$ROOT/usr/bin/python3.11" ]; then
    mirrors=()
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
      for u in $(awk '/^URIs:/{print $2}' /etc/apt/sources.list.d/debian.sources); do
        case "$u" in
          *security*) mirrors+=("deb $u bookworm-security main") ;;
          *) mirrors+=("deb $u bookworm main" "deb $u bookworm-updates main") ;;
        esac
      done
    fi
    [ ${#mirrors[@]} -gt 0 ] || mirrors=("deb http://deb.debian.org/debian bookworm main")
    log "extracting an arm64 Debian bookworm root (python3.11)"
    rm -rf "$ROOT.tmp"
    mmdebstrap --quiet --arch=arm64 --variant=extract --include=python3.11,libstdc++6,libgcc-s1 \
      bookworm "$ROOT.tmp" "${mirrors[@]}"
    rm -rf "$ROOT"; mv "$ROOT.tmp" "$ROOT"
  fi
  # qemu passes the host's x86 /proc/cpuinfo through; some libraries (onnxruntime) then crash.
  # qemu looks under the prefix first, so give the guest an ARM one.
  mkdir -p "$ROOT/proc"
  for i in 0 1 2 3; do
    printf 'processor\t: %s\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x4\nCPU part\t: 0xd0b\nCPU revision\t: 1\n\n' "$i"
  done > "$ROOT/proc/cpuinfo"
  # 3. aarch64 wheels, installed from the host (not under emulation)
  plat=()
  for p in manylinux_2_28_aarch64 manylinux_2_27_aarch64 manylinux_2_26_aarch64 manylinux_2_24_aarch64 \
           manylinux_2_17_aarch64 manylinux2014_aarch64; do plat+=(--platform "$p"); done
  abi=(--only-binary=:all: --python-version 3.11 --implementation cp --abi cp311 --abi abi3 --abi none)
  log "installing aarch64 numpy + apache-tvm-ffi==$FFI_VERSION"
  rm -rf "$SITE.tmp"
  "$PY" -m pip install --quiet --no-compile "${plat[@]}" "${abi[@]}" --target "$SITE.tmp" \
    numpy "apache-tvm-ffi==$FFI_VERSION"
  rm -rf "$SITE"; mv "$SITE.tmp" "$SITE"
  log "taking libtvm_runtime.so out of the aarch64 apache-tvm==$TVM_VERSION wheel"
  wheels="$CACHE/wheels"; mkdir -p "$wheels"
  "$PY" -m pip download --quiet --no-deps "${plat[@]}" "${abi[@]}" -d "$wheels" "apache-tvm==$TVM_VERSION"
  whl=$(ls "$wheels"/apache_tvm-"$TVM_VERSION"-*aarch64*.whl | head -1)
  rm -rf "$RT"; mkdir -p "$RT"
  "$PY" - "$whl" "$RT" <<'EOF'
import sys, zipfile, pathlib
whl, out = sys.argv[1], pathlib.Path(sys.argv[2])
with zipfile.ZipFile(whl) as z:
    name = next(n for n in z.namelist() if n.endswith("tvm/lib/libtvm_runtime.so"))
    (out / "libtvm_runtime.so").write_bytes(z.read(name))
EOF
  rm -rf "$wheels"
  touch "$STAMP"
  log "built in $CACHE ($(du -sh "$CACHE" | cut -f1)); guest runtime: $(du -sh "$SITE" | cut -f1) site-packages + $(du -sh "$RT" | cut -f1) libtvm_runtime.so"
fi
echo "QEMU_LD_PREFIX=$ROOT"
echo "PYTHONPATH=$SITE:$REPO"
echo "EDGE_SLIM_TVM_RUNTIME=$RT/libtvm_runtime.so"
echo "PYTHON=qemu-aarch64-static $ROOT/usr/bin/python3.11"
