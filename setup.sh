#!/usr/bin/env bash
# Create .venv in the repository root and install LoRA Studio into it.
# NVIDIA driver present -> CUDA build of torch (+ bitsandbytes); otherwise the CPU build.
#   ./setup.sh            install the app
#   ./setup.sh --test     also install what the test suite needs
set -euo pipefail
cd "$(dirname "$0")"
extras=""
[[ "${1:-}" == "--test" ]] && extras="test"

PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  for cand in python3 python3.12 python3.11 python3.10 python; do
    if "$cand" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' >/dev/null 2>&1; then
      PY="$cand"; break
    fi
  done
fi
[[ -n "$PY" ]] || { echo "setup.sh: Python 3.10 or newer is required (python3 not found)." >&2; exit 1; }

if [[ ! -x .venv/bin/python ]]; then
  echo "Creating .venv with $PY"
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
$VPY -m pip install --quiet --upgrade pip setuptools wheel

TORCH_VERSION="${LORA_STUDIO_TORCH_VERSION:-2.13.0}"
torch_args=("torch==${TORCH_VERSION}")
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "NVIDIA driver found: installing CUDA torch"
  gpu=1
else
  echo "No NVIDIA driver found: installing CPU torch"
  gpu=0
  # Prefer the small CPU-only wheels when the PyTorch index is reachable.
  if $VPY - <<'PYEOF' 2>/dev/null; then
import urllib.request, sys
try:
    urllib.request.urlopen("https://download.pytorch.org/whl/cpu/torch/", timeout=5)
except Exception:
    sys.exit(1)
PYEOF
    torch_args+=(--index-url https://download.pytorch.org/whl/cpu --extra-index-url https://pypi.org/simple)
  fi
fi
if ! $VPY -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '${TORCH_VERSION}' else 1)" 2>/dev/null; then
  $VPY -m pip install "${torch_args[@]}"
fi

spec="."
if [[ $gpu == 1 && -n "$extras" ]]; then spec=".[cuda,$extras]"
elif [[ $gpu == 1 ]]; then spec=".[cuda]"
elif [[ -n "$extras" ]]; then spec=".[$extras]"; fi
$VPY -m pip install --quiet -e "$spec"
if [[ $gpu == 1 ]] && ! $VPY -c "import xformers" >/dev/null 2>&1; then
  # xformers only where a wheel is built for this torch (pinning torch keeps pip from replacing it); without it the
  # engine uses PyTorch SDPA attention, which is as fast.
  $VPY -m pip install --quiet xformers "torch==${TORCH_VERSION}" >/dev/null 2>&1 ||
    echo "No xformers wheel for torch ${TORCH_VERSION}: PyTorch SDPA attention is used."
fi
# The WD14 tagger runs on ONNX Runtime: the CUDA build where there is an NVIDIA driver (the two builds provide the
# same module and must not both be installed).
if [[ $gpu == 1 ]]; then ort=onnxruntime-gpu; other=onnxruntime; else ort=onnxruntime; other=onnxruntime-gpu; fi
if ! $VPY -m pip show --quiet "$ort" >/dev/null 2>&1; then
  $VPY -m pip uninstall --quiet -y "$other" >/dev/null 2>&1 || true
  $VPY -m pip install --quiet "$ort>=1.20"
fi
# Only the CLIP BPE vocabulary file is used from open-clip-torch; its own deps (torchvision, timm) are not needed.
$VPY -m pip install --quiet --no-deps "open-clip-torch==3.3.0"
echo "LoRA Studio is installed in $(pwd)/.venv"
