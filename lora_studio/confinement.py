"""Folder confinement: with ``--allow-dir`` (the GUI passes its allowed folders when it listens on the network),
every path a run or the GUI reads or writes must resolve, links followed, inside one of the allowed folders, and
settings that name a Python callable may only name one from a list we trust.

One rule for the GUI's form and the engine: ``Confinement.problem`` says why a path is refused; ``check`` raises it.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .errors import UserError

log = logging.getLogger(__name__)

# Dotted names a confined setting may import (a package's optimizers or schedules, nothing else): the packages the
# product installs or knows from sd-scripts.
TRUSTED_CALLABLES = {
    "optimizer_type": ("torch.optim.", "bitsandbytes.optim.", "dadaptation.", "schedulefree.", "prodigyopt.",
                       "lion_pytorch.", "transformers.optimization.", "pytorch_optimizer.", "prodigyplus.",
                       "came_pytorch."),
    "lr_scheduler_type": ("torch.optim.lr_scheduler.", "transformers.optimization.", "diffusers.optimization.",
                          "pytorch_optimizer.", "schedulefree."),
}


def _resolved(path: str | Path) -> Path:
    return Path(os.path.expanduser(str(path))).resolve()


@dataclass(frozen=True)
class Confinement:
    """``roots``: the allowed folders, resolved; None: not confined (the command line on one's own machine)."""

    roots: tuple[Path, ...] | None = None

    @classmethod
    def of(cls, folders: list[str | Path] | None) -> "Confinement":
        return cls(tuple(_resolved(f) for f in folders) if folders else None)

    @property
    def confined(self) -> bool:
        return self.roots is not None

    def allows(self, path: str | Path) -> bool:
        if self.roots is None:
            return True
        resolved = _resolved(path)
        return any(resolved == root or root in resolved.parents for root in self.roots)

    def problem(self, path: str | Path, hint: str = "") -> str | None:
        """None if ``path`` (resolved, links followed) lies inside an allowed folder; else why not."""
        if self.allows(path):
            return None
        resolved = _resolved(path)
        shown = f"{path}" if str(resolved) == os.path.expanduser(str(path)) else f"{path} (which leads to {resolved})"
        return (f"{shown} is outside the folders allowed ({', '.join(str(r) for r in self.roots)})"
                + (f"; {hint}" if hint else ""))

    def check(self, path: str | Path, setting: str) -> None:
        problem = self.problem(path, "add its folder with --allow-dir")
        if problem:
            raise UserError(f"{setting}: {problem}; nothing was read or written")

    def check_folder_entries(self, folder: str | Path, setting: str) -> None:
        """The folder and every entry directly in it (a link inside that leads outside is refused too)."""
        folder = Path(os.path.expanduser(str(folder)))
        self.check(folder, setting)
        if folder.is_dir():
            for entry in sorted(folder.iterdir()):
                self.check(entry, f"{setting} ({folder})")

    def import_callable(self, dotted: str, setting: str, known: bool = False):
        """``package.Name`` imported for ``setting``: confined, only from ``TRUSTED_CALLABLES``; unconfined, any
        importable name, as sd-scripts allows on its command line (said in the log unless ``known``: a name the
        product maps a setting's value to)."""
        problem = self.callable_problem(dotted, setting)
        if problem:
            raise UserError(f"{setting}: {problem}")
        if not self.confined and not known:
            log.info("%s: importing %s (a dotted name, imported and called as sd-scripts does)", setting, dotted)
        module_name, _, name = dotted.rpartition(".")
        try:
            return getattr(importlib.import_module(module_name), name)
        except (ImportError, AttributeError, ValueError) as exc:
            raise UserError(f"{setting}: cannot import {dotted} ({exc})") from None

    def callable_problem(self, dotted: str, setting: str) -> str | None:
        if not self.confined or "." not in dotted:
            return None
        trusted = TRUSTED_CALLABLES.get(setting, ())
        if dotted.startswith(trusted) and dotted.rpartition(".")[2].isidentifier():
            return None
        return (f"'{dotted}' is not among the names this confined run may import (a class from "
                f"{', '.join(p.rstrip('.') for p in trusted)}); use one of those, or a name LoRA Studio knows")


_active = Confinement()


def active() -> Confinement:
    """The confinement of the run in progress (unconfined unless ``confined_to`` set one)."""
    return _active


@contextlib.contextmanager
def confined_to(confinement: Confinement) -> Iterator[Confinement]:
    global _active
    before, _active = _active, confinement
    try:
        yield confinement
    finally:
        _active = before
