"""The sha256 of model files, remembered between runs: a 7 GB checkpoint takes from seconds to a minute to hash, and
a run (or a LoRA tool) hashes its base model each time it starts.

An entry is kept per file under its resolved path with the file's size and modification time (ns); a file whose
size or time changed is hashed again. The entries live in one small JSON file, ``file_hashes.json``, in the cache
folder: ``$LORA_STUDIO_CACHE_DIR``, else ``$XDG_CACHE_HOME/lora_studio``, else ``~/.cache/lora_studio``
(``%LOCALAPPDATA%\\lora_studio`` on Windows). It is written atomically; an unreadable or corrupt one is ignored
(and replaced), and a cache folder that cannot be written only costs the time of hashing again.

A diffusers folder has no single file to hash: ``folder_sha256`` is the sha256 of the list of its weight files
(each one's path inside the folder and its own sha256), so two folders with the same weights have the same hash
whatever their names or configs.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from .io_utils import atomic_write_bytes, file_sha256

CACHE_DIR_ENV = "LORA_STUDIO_CACHE_DIR"
CACHE_FILE = "file_hashes.json"
VERSION = 1
MAX_ENTRIES = 500  # the most recently hashed files; older ones drop out
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def cache_dir() -> Path:
    """The folder of LoRA Studio's small caches (see the module's docstring)."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]).expanduser()
    if os.name == "nt" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "lora_studio"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "lora_studio"


def _cache_path() -> Path:
    return cache_dir() / CACHE_FILE


def _load() -> dict[str, dict]:
    try:
        data = json.loads(_cache_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    entries = data.get("files") if isinstance(data, dict) and data.get("version") == VERSION else None
    return entries if isinstance(entries, dict) else {}


def _save(entries: dict[str, dict]) -> None:
    kept = dict(list(entries.items())[-MAX_ENTRIES:])
    try:
        atomic_write_bytes(_cache_path(), json.dumps({"version": VERSION, "files": kept}).encode("utf-8"))
    except OSError:
        pass  # a read-only or full cache folder: the hash is computed again next time


def _stamp(stat: os.stat_result) -> dict[str, int]:
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def cached_sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes, read from the cache when the file's resolved path, size and modification time
    match an entry; else computed (and remembered)."""
    path = Path(path).expanduser().resolve()
    key, stamp = str(path), _stamp(path.stat())
    entry = _load().get(key)
    if (isinstance(entry, dict) and {k: entry.get(k) for k in stamp} == stamp
            and _SHA256.fullmatch(str(entry.get("sha256")))):
        return entry["sha256"]
    digest = file_sha256(path)
    if _stamp(path.stat()) == stamp:  # not changed while it was read
        entries = _load()  # as it is now: another process may have added its own
        entries.pop(key, None)
        entries[key] = {**stamp, "sha256": digest}
        _save(entries)
    return digest


def weight_files(folder: str | Path) -> list[Path]:
    """The weight files in a (diffusers) folder and its subfolders, in a fixed order; hidden ones left out."""
    folder = Path(folder)
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in WEIGHT_SUFFIXES and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def folder_sha256(folder: str | Path) -> tuple[str, int]:
    """(the sha256 of the lines "<path in the folder> <its sha256>" of the folder's weight files, how many)."""
    folder = Path(folder).expanduser()
    files = weight_files(folder)
    listing = "".join(f"{p.relative_to(folder).as_posix()} {cached_sha256(p)}\n" for p in files)
    return hashlib.sha256(listing.encode("utf-8")).hexdigest(), len(files)
