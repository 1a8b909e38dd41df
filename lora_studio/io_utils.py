"""File writes that never leave a half-written file behind: temp file in the same folder, fsync, rename."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path


def _fsync_dir(folder: Path) -> None:
    if os.name == "nt":  # directories cannot be opened for fsync on Windows
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _test_pause(path: Path) -> None:
    """Fault-injection hook for the test suite: hold a finished weights file (``.safetensors``) before its rename,
    for the seconds the variable says (the run's other files, such as its config, are written at once)."""
    pause = float(os.environ.get("LORA_STUDIO_TEST_PAUSE_BEFORE_RENAME", "0") or 0)
    if pause and path.suffix == ".safetensors":
        import time

        time.sleep(pause)


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call ``write(temp_path)`` then move the finished file over ``path`` in one step.

    A crash at any moment leaves either the old ``path`` or the new one, never a truncated file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        _test_pause(path)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_folder(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Fill a temporary sibling folder with ``write(folder)``, fsync it, then rename it to ``path``.

    An existing ``path`` is replaced only once the new folder is complete: a crash leaves the old folder, the new
    one, or (between the two renames) the old one under a ``.old`` name that ``path`` readers ignore.
    """
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        write(tmp)
        for item in tmp.iterdir():
            with open(item, "rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(tmp)
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.{os.getpid()}.old")
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def safetensors_shapes(path: Path) -> dict[str, tuple[list[int], str]]:
    """{tensor name: (shape, dtype)} from a .safetensors header, without reading the weights."""
    with open(path, "rb") as fh:
        size = struct.unpack("<Q", fh.read(8))[0]
        if size > 100 * 2**20 or size > Path(path).stat().st_size:
            raise ValueError(f"{path} is not a .safetensors file")
        header = json.loads(fh.read(size))
    return {k: (v["shape"], v["dtype"]) for k, v in header.items() if k != "__metadata__"}
