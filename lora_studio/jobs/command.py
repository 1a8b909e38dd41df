"""The engine command the GUI runs: ``accelerate launch -m lora_studio.train --config <file>`` as an argv list."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from ..config import Config


def accelerate_prefix() -> list[str]:
    """``accelerate`` from this environment (its console script), else the same module through this Python."""
    scripts = Path(sys.executable).parent
    for name in ("accelerate", "accelerate.exe"):
        if (scripts / name).is_file():
            return [str(scripts / name)]
    return [sys.executable, "-m", "accelerate.commands.launch"]


def engine_argv(cfg: Config, config_path: str | Path, allowed_dirs: list[Path] | None = None) -> list[str]:
    """``allowed_dirs``: the GUI's allowed folders when it listens on the network; the engine confines itself to
    them (``--allow-dir``)."""
    prefix = accelerate_prefix()
    argv = prefix + (["launch"] if len(prefix) == 1 else [])
    argv += ["--num_machines", "1", "--num_processes", str(cfg.num_processes), "--mixed_precision",
             cfg.mixed_precision, "--dynamo_backend", "no"]
    if cfg.num_processes > 1:
        argv.append("--multi_gpu")
    argv += ["-m", "lora_studio.train", "--config", str(config_path)]
    for folder in allowed_dirs or []:
        argv += ["--allow-dir", str(folder)]
    return argv


def display(argv: list[str]) -> str:
    """The argv as one line a user can paste into a terminal."""
    if sys.platform == "win32":
        import subprocess

        return subprocess.list2cmdline(argv)
    return shlex.join(argv)
