#!/usr/bin/env bash
# Open LoRA Studio in the browser; sets itself up (.venv) on first use.
set -euo pipefail
cd "$(dirname "$0")"
if [[ ! -x .venv/bin/lora-studio ]]; then
  ./setup.sh
fi
exec .venv/bin/lora-studio gui "$@"
