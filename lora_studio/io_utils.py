"""File writes that never leave a half-written file behind (temp file in the same folder, fsync, rename), and the one
reader of .safetensors headers."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError


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


# The safetensors library's own limit on the JSON header: a larger "length" is a file of another kind (its first 8
# bytes read as a number) or a corrupt one, and reading that many bytes would only waste memory.
SAFETENSORS_HEADER_LIMIT = 100_000_000


class SafetensorsFormatError(UserError, ValueError):
    """A file that cannot be read as a .safetensors file; the message names it and says why (a ValueError too, for
    the callers that treat an unreadable header as "unknown")."""


@dataclass(frozen=True)
class SafetensorsHeader:
    """What a .safetensors header says: each tensor's entry (``dtype``, ``shape``, ``data_offsets`` = [begin, end]
    counted from ``data_start``), the file's string metadata, and where the tensor bytes begin."""

    tensors: dict[str, dict]
    metadata: dict[str, str]
    data_start: int


def _parse_safetensors_header(name: str, head: bytes, read: Callable[[int], bytes], total: int, what: str | None,
                              check_data: bool) -> SafetensorsHeader:
    """The checks of ``read_safetensors_header`` on ``total`` bytes whose first 8 are ``head``; ``read(n)`` gives
    the n bytes after them."""
    def refuse(reason: str):
        prefix = f"{what}: " if what else ""
        raise SafetensorsFormatError(f"{prefix}cannot read {name} as a .safetensors file: {reason}")

    if len(head) < 8:
        refuse(f"it is {total} bytes long, too short for a header; is the download complete?")
    (size,) = struct.unpack("<Q", head[:8])
    if size > SAFETENSORS_HEADER_LIMIT:
        refuse(f"its first 8 bytes give a header length of {size:,} bytes, over the {SAFETENSORS_HEADER_LIMIT:,}-byte "
               "limit (a file of another kind, or a damaged one)")
    if 8 + size > total:
        refuse(f"it ends inside its header ({total - 8:,} of {size:,} bytes); is the download complete?")
    try:
        header = json.loads(read(size))
    except (UnicodeDecodeError, ValueError):
        header = None
    if not isinstance(header, dict):
        refuse("its header is not a JSON object (a file of another kind, or a damaged one)")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        refuse("its __metadata__ is not a JSON object")
    data_end = 0
    for key, entry in header.items():
        try:
            begin, end = entry["data_offsets"]
            numbers = [*entry["shape"], begin, end]
            valid = isinstance(entry["dtype"], str) and all(type(n) is int and n >= 0 for n in numbers)
        except (TypeError, KeyError, ValueError):
            valid = False
        if not valid or begin > end:
            refuse(f"its header entry {key!r} is not a tensor's dtype, shape and data_offsets")
        data_end = max(data_end, end)
    if check_data and data_end > total - 8 - size:
        refuse(f"it ends inside its tensor data ({total - 8 - size:,} of {data_end:,} bytes); is the download "
               "complete?")
    return SafetensorsHeader(header, metadata, 8 + size)


def read_safetensors_header(path: str | Path, what: str | None = None, check_data: bool = True) -> SafetensorsHeader:
    """The header of a .safetensors file, checked, without reading the weights. A missing file, a folder, a file of
    another kind, a header over ``SAFETENSORS_HEADER_LIMIT`` or not JSON, and (``check_data``) a file shorter than
    its tensors need all raise SafetensorsFormatError naming the file (after ``what``, the setting it came from).
    ``check_data=False`` accepts a header with no weights after it (what the resource estimate reads)."""
    path = Path(path).expanduser()
    prefix = f"{what}: " if what else ""
    if path.is_dir():
        raise SafetensorsFormatError(f"{prefix}{path} is a folder, not a .safetensors file")
    try:
        with open(path, "rb") as fh:
            total = os.fstat(fh.fileno()).st_size
            return _parse_safetensors_header(str(path), fh.read(8), fh.read, total, what, check_data)
    except FileNotFoundError:
        raise SafetensorsFormatError(f"{prefix}not found: {path}") from None
    except OSError as exc:
        raise SafetensorsFormatError(f"{prefix}cannot read {path}: {exc.strerror or exc}") from None


def safetensors_header_of_bytes(blob: bytes, name: str = "the serialised tensors") -> SafetensorsHeader:
    """``read_safetensors_header`` of a file's bytes held in memory."""
    return _parse_safetensors_header(name, blob[:8], lambda n: blob[8:8 + n], len(blob), None, True)


def safetensors_shapes(path: Path) -> dict[str, tuple[list[int], str]]:
    """{tensor name: (shape, dtype)} from a .safetensors header, without reading the weights (the weights need not
    be there: a header alone is enough)."""
    header = read_safetensors_header(path, check_data=False)
    return {k: (v["shape"], v["dtype"]) for k, v in header.tensors.items()}
