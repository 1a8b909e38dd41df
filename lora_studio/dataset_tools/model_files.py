"""Finding a tagger's or captioner's model files: ``--model_dir``, else the Hugging Face cache, else (online) a
download from the Hub. Offline, or when the download fails, the error names the repository, the files and where to
put them."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from ..tool_progress import phase

_TRUE = ("1", "on", "yes", "true")


@dataclass(frozen=True)
class ModelSpec:
    """What a tool needs from a Hub repository: ``files`` (all required) and ``optional`` files fetched with them."""

    kind: str  # e.g. "WD14 tagger", for messages
    repo_id: str
    files: tuple[str, ...]
    optional: tuple[str, ...] = field(default=())


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def _where_to_put(spec: ModelSpec) -> str:
    names = ", ".join(spec.files)
    if spec.optional:
        names += f" (and those of {', '.join(spec.optional)} that it has)"
    return (f"Download {names} from https://huggingface.co/{spec.repo_id} (Files and versions) into one folder and "
            f"run again with --model_dir FOLDER")


def _missing(folder: Path, files: tuple[str, ...]) -> list[str]:
    return [name for name in files if not (folder / name).is_file()]


def _from_cache(spec: ModelSpec, cache_dir: str | Path | None) -> Path | None:
    """The cached snapshot folder holding all of ``spec.files``, or None."""
    from huggingface_hub import hf_hub_download

    try:
        paths = [Path(hf_hub_download(spec.repo_id, name, cache_dir=cache_dir, local_files_only=True))
                 for name in spec.files]
    except Exception:  # not cached (LocalEntryNotFoundError), or a broken cache entry
        return None
    folder = paths[0].parent
    return folder if all(p.parent == folder for p in paths) else None


def _download(spec: ModelSpec, cache_dir: str | Path | None) -> Path:
    from huggingface_hub import snapshot_download

    phase(f"downloading {spec.repo_id}")
    try:
        folder = Path(snapshot_download(spec.repo_id, cache_dir=cache_dir,
                                        allow_patterns=[*spec.files, *spec.optional]))
    except Exception as exc:
        raise UserError(f"Could not download the {spec.kind} model {spec.repo_id} "
                        f"({exc.__class__.__name__}: {exc}). {_where_to_put(spec)}.") from None
    missing = _missing(folder, spec.files)
    if missing:
        raise UserError(f"The Hub repository {spec.repo_id} has no {', '.join(missing)}: it is not a "
                        f"{spec.kind} model. Use another --repo_id, or --model_dir FOLDER holding "
                        f"{', '.join(spec.files)}")
    return folder


def find_model(spec: ModelSpec, model_dir: str | Path | None = None, cache_dir: str | Path | None = None) -> Path:
    """The folder holding the model's files. ``cache_dir``: the Hub cache (default: huggingface_hub's, from
    HF_HUB_CACHE / HF_HOME)."""
    if model_dir:
        folder = Path(model_dir).expanduser()
        if not folder.is_dir():
            raise UserError(f"--model_dir {model_dir} is not a folder. It must hold the {spec.kind} files "
                            f"{', '.join(spec.files)} (from https://huggingface.co/{spec.repo_id})")
        missing = _missing(folder, spec.files)
        if missing:
            raise UserError(f"--model_dir {model_dir} lacks {', '.join(missing)}. The {spec.kind} needs "
                            f"{', '.join(spec.files)} in that folder (e.g. from https://huggingface.co/{spec.repo_id})")
        return folder
    cached = _from_cache(spec, cache_dir)
    if cached is not None:
        return cached
    if hub_offline():
        raise UserError(f"The {spec.kind} model {spec.repo_id} is not in the Hugging Face cache and downloads are "
                        f"off (HF_HUB_OFFLINE=1). {_where_to_put(spec)}.")
    return _download(spec, cache_dir)
