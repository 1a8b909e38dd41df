"""Text-encoder outputs computed once per caption (cache_text_encoder_outputs), in memory or on disk.

Only valid when the text encoders are frozen and every caption is fixed (no shuffling or dropout), as in
sd-scripts; both are checked before anything is encoded. A family that can drop a cached condition
(``drop_cached_condition``: Anima, as sd-scripts' drop_cached_text_encoder_outputs) keeps whole-caption dropout:
a dropped caption ("") becomes that family's empty condition.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..config import Config
from ..errors import UserError
from ..io_utils import atomic_write
from ..data.images import CACHE_FOLDER

log = logging.getLogger(__name__)


WHOLE_CAPTION_DROPOUT = ("caption_dropout_rate", "caption_dropout_every_n_epochs")


def check_te_cache_allowed(cfg: Config, train_te: bool, data, family=None) -> None:
    if train_te:
        raise UserError("cache_text_encoder_outputs needs frozen text encoders: set network_train_unet_only = true "
                        "(or text_encoder_lr = 0)")
    drops = getattr(family, "drop_cached_condition", None) is not None
    varying = [name for name in ("shuffle_caption", "caption_dropout_rate", "caption_tag_dropout_rate",
                                 "caption_dropout_every_n_epochs", "enable_wildcard", "token_warmup_step")
               if any(getattr(s, name) for d in data.datasets for s in d.subsets)
               and not (drops and name in WHOLE_CAPTION_DROPOUT)]
    if varying:
        raise UserError(f"cache_text_encoder_outputs needs fixed captions; turn off {', '.join(varying)}")


def te_fingerprint(text_encoders, options: dict, weighted: bool = False, identity: str | None = None) -> str:
    """What the cached outputs depend on besides the caption: the family's prompt options (SD: clip skip and token
    length) and the encoders' weights, or ``identity`` when the family knows its encoders by their files' hashes (a
    5-billion-parameter T5 is not read twice); weighted_captions (emphasis read, not literal text) counts only when
    on, so an older cache stays valid."""
    values = "|".join(str(v) for v in options.values())
    digest = hashlib.sha256(f"{values}{'|weighted' if weighted else ''}".encode())
    if identity is not None:
        digest.update(identity.encode())
        return digest.hexdigest()[:16]
    for te in text_encoders:
        for name, tensor in sorted(te.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def build_te_cache(captions_by_folder: dict[str, Path], encode, fingerprint: str, to_disk: bool,
                   batch_size: int | None = 8, show_progress: bool = True) -> dict[str, dict[str, torch.Tensor]]:
    """caption -> {"encoder_hidden_states": [T, C], ...} for every caption; ``encode(list[str])`` gives batches."""
    cache: dict[str, dict[str, torch.Tensor]] = {}
    todo: list[tuple[str, Path | None]] = []
    for caption, folder in captions_by_folder.items():
        path = None
        if to_disk:
            key = hashlib.sha256(f"{fingerprint}|{caption}".encode()).hexdigest()[:24]
            path = folder / CACHE_FOLDER / f"te_{key}.safetensors"
            if path.is_file():
                try:
                    cache[caption] = load_file(str(path))
                    continue
                except Exception as exc:
                    log.warning("re-encoding a caption: cache file %s unreadable (%s)", path, exc)
        todo.append((caption, path))
    with tqdm(total=len(todo), desc="caching text-encoder outputs", disable=not show_progress or not todo,
              unit="caption") as bar, torch.no_grad():
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            outputs = encode([c for c, _ in chunk])
            for row, (caption, path) in enumerate(chunk):
                entry = {k: v[row].float().cpu().contiguous() for k, v in outputs.items()}
                cache[caption] = entry
                if path is not None:
                    path.parent.mkdir(exist_ok=True)
                    atomic_write(path, lambda tmp, e=entry: save_file(e, tmp))
            bar.update(len(chunk))
    return cache


def cached_condition(cache: dict[str, dict[str, torch.Tensor]], captions: list[str], device, drop=None) -> dict:
    """The cached outputs of ``captions``; with ``drop`` (the family's ``drop_cached_condition``) a dropped caption
    ("" when no image's caption is empty) is the family's empty condition: ``drop(cond, dropped rows)``."""
    dropped = [drop is not None and c == "" and c not in cache for c in captions]
    stand_in = next(iter(cache))  # any caption's entry, only for the shapes of a dropped row
    rows = [cache[stand_in if gone else c] for c, gone in zip(captions, dropped)]
    cond = {k: torch.stack([row[k] for row in rows]).to(device) for k in rows[0]}
    if any(dropped):
        cond = drop(cond, torch.tensor(dropped, device=device))
    return cond
