"""Keeping only the last N intermediate files and states, as sd-scripts' save_last_n_* options do.

Step files: after a save at step S, step files and states older than S - N steps are removed (N =
save_last_n_steps; save_last_n_steps_state for states when set). Epoch files: after a save at epoch E, the one of
epoch E - save_every_n_epochs x N is removed (N = save_last_n_epochs; save_last_n_epochs_state for states). The
final file and the final state are never removed.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

from ..config import Config
from .outputs import epoch_file

log = logging.getLogger("lora_studio")


def _remove(path: Path, why: str) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()
    else:
        return
    log.info("removed %s (%s)", path.name, why)


def after_step_save(cfg: Config, step: int) -> None:
    out, name = Path(cfg.output_dir), re.escape(cfg.output_name)
    for keep, pattern, setting in (
            (cfg.save_last_n_steps, rf"{name}-step(\d{{8}})\.safetensors", "save_last_n_steps"),
            (cfg.save_last_n_steps_state or cfg.save_last_n_steps, rf"{name}-step(\d{{8}})-state",
             "save_last_n_steps_state" if cfg.save_last_n_steps_state else "save_last_n_steps")):
        if not keep:
            continue
        for path in out.iterdir():
            match = re.fullmatch(pattern, path.name)
            if match and int(match[1]) < step - keep:
                _remove(path, f"{setting} = {keep}")


def after_epoch_save(cfg: Config, epoch: int) -> None:
    every = cfg.save_every_n_epochs
    if not every:
        return
    for keep, suffix, setting in ((cfg.save_last_n_epochs, "", "save_last_n_epochs"),
                                  (cfg.save_last_n_epochs_state or cfg.save_last_n_epochs, "-state",
                                   "save_last_n_epochs_state" if cfg.save_last_n_epochs_state else
                                   "save_last_n_epochs")):
        old = epoch - every * (keep or 0)
        if keep and old >= 1:
            path = epoch_file(cfg, old)
            _remove(path.with_name(path.stem + "-state") if suffix else path, f"{setting} = {keep}")
