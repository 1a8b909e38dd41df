"""Train several configs one after another in one process, as ``lora-studio train --config`` does for one: one
start-up (Python, torch) for many short runs. Prints one JSON line at the end: {config: "ok" | "<error>"}."""

from __future__ import annotations

import json
import sys


def main(paths: list[str]) -> int:
    from accelerate.state import AcceleratorState

    from lora_studio.cli import _setup_logging
    from lora_studio.config import load_config
    from lora_studio.errors import UserError
    from lora_studio.training.trainer import train

    _setup_logging()
    results = {}
    for path in paths:
        try:
            train(load_config(path))
            results[path] = "ok"
        except (UserError, Exception) as exc:  # every config gets its run; the test reports each failure
            results[path] = f"{type(exc).__name__}: {exc}"
        AcceleratorState._reset_state(reset_partial_state=True)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
