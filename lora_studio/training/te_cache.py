"""Text-encoder outputs computed once per caption (cache_text_encoder_outputs), in memory or on disk.

Only valid when the text encoders are frozen and every caption is fixed (no shuffling or dropout), as in
sd-scripts; both are checked before anything is encoded.
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


def check_te_cache_allowed(cfg: Config, train_te: bool, data) -> None:
    if train_te:
        raise UserError("cache_text_encoder_outputs needs frozen text encoders: set network_train_unet_only = true "
                        "(or text_encoder_lr = 0)")
    varying = [name for name in ("shuffle_caption", "caption_dropout_rate", "caption_tag_dropout_rate",
                                 "caption_dropout_every_n_epochs", "enable_wildcard", "token_warmup_step")
               if any(getattr(s, name) for d in data.datasets for s in d.subsets)]
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


def cached_condition(cache: dict[str, dict[str, torch.Tensor]], captions: list[str], device) -> dict:
    keys = cache[captions[0]].keys()
    return {k: torch.stack([cache[c][k] for c in captions]).to(device) for k in keys}
