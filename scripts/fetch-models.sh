#!/usr/bin/env bash
# Fetch the real third-party ONNX models the bring-your-own-model tests compile (tests/test_byom.py):
# each ships inside a PyPI package. The wheels are downloaded once (pip download --no-deps, ~38 MB in
# all) and only their .onnx files are kept, in a cache outside git:
#
#   bash scripts/fetch-models.sh          # -> .cache/third-party-models/<package>-<version>/<file>.onnx
#   bash scripts/fetch-models.sh check    # exit 0 if every model is there
#
# Cache: $EDGE_SLIM_MODEL_CACHE, default <repo>/.cache/third-party-models (gitignored). Tests never
# download; they skip, naming this script, when the cache is missing.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${EDGE_SLIM_MODEL_CACHE:-$REPO/.cache/third-party-models}"
PY="${PYTHON:-python3}"
[ -x "$REPO/.venv/bin/python" ] && PY="$REPO/.venv/bin/python"

# package==version  path of the .onnx inside the wheel (one line per model)
MODELS="
rapidocr-onnxruntime==1.4.4 rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx
rapidocr-onnxruntime==1.4.4 rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx
rapidocr-onnxruntime==1.4.4 rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx
nudenet==3.4.2 nudenet/320n.onnx
silero-vad==6.2.3 silero_vad/data/silero_vad.onnx
silero-vad==6.2.3 silero_vad/data/silero_vad_16k_op15.onnx
magika==0.5.1 magika/models/standard_v1/model.onnx
"

log() { echo "fetch-models: $*" >&2; }

missing() {
  echo "$MODELS" | while read -r spec path; do
    [ -n "$spec" ] || continue
    f="$CACHE/${spec/==/-}/$(basename "$path")"
    [ -s "$f" ] || echo "$spec"
  done | sort -u
}

case "${1:-fetch}" in
  check) [ -z "$(missing)" ]; exit $? ;;
  fetch) ;;
  *) echo "usage: $0 [fetch|check]" >&2; exit 2 ;;
esac

todo=$(missing)
if [ -z "$todo" ]; then
  log "all models present in $CACHE"
  exit 0
fi
mkdir -p "$CACHE"
wheels=$(mktemp -d)
trap 'rm -rf "$wheels"' EXIT
for spec in $todo; do
  log "downloading $spec"
  "$PY" -m pip download --quiet --no-deps --only-binary=:all: -d "$wheels/${spec/==/-}" "$spec"
  dir="$CACHE/${spec/==/-}"
  paths=$(echo "$MODELS" | awk -v s="$spec" '$1 == s {print $2}')
  "$PY" - "$wheels/${spec/==/-}" "$dir" $paths <<'PYEOF'
import pathlib, sys, zipfile
src, dst, wanted = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3:]
whl = next(src.glob("*.whl"))
dst.mkdir(parents=True, exist_ok=True)
with zipfile.ZipFile(whl) as z:
    for name in wanted:
        out = dst / pathlib.Path(name).name
        tmp = out.with_suffix(".part")
        tmp.write_bytes(z.read(name))
        tmp.replace(out)
(dst / "SOURCE").write_text(f"{whl.name}\n" + "".join(f"{n}\n" for n in wanted))
PYEOF
done
log "models in $CACHE ($(du -sh "$CACHE" | cut -f1))"
