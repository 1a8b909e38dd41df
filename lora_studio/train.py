"""Engine entry point: ``python -m lora_studio.train --config run.toml`` (also under ``accelerate launch``)."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
