"""CLIP tokenizers built offline from the BPE file that the open-clip-torch wheel ships (no hub download).

The vocabulary is derived as OpenAI's CLIP tokenizer derives it: 256 byte symbols, the same with ``</w>``, one entry
per merge, then the start and end tokens (49,408 entries). The ids equal those of openai/clip-vit-large-patch14.
"""

from __future__ import annotations

import gzip
import importlib.util
from functools import lru_cache
from pathlib import Path

from ..errors import UserError

_NUM_MERGES = 49152 - 256 - 2


def _byte_symbols() -> list[str]:
    """The 256 byte symbols in CLIP's order: printable bytes as themselves first, then the rest mapped past 255."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + n) for n in range(len(others))]


def bpe_file() -> Path:
    spec = importlib.util.find_spec("open_clip")  # locates the package without importing it (it needs torchvision)
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the CLIP vocabulary is missing: install it with "
                        "'pip install --no-deps open-clip-torch==3.3.0' (setup.sh does this)")
    path = Path(list(spec.submodule_search_locations)[0]) / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise UserError(f"the CLIP vocabulary file is missing: {path}")
    return path


@lru_cache(maxsize=1)
def _vocab_and_merges() -> tuple[dict[str, int], tuple[str, ...]]:
    with gzip.open(bpe_file(), "rt", encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    merges = tuple(lines[1:_NUM_MERGES + 1])
    byte_syms = _byte_symbols()
    tokens = byte_syms + [s + "</w>" for s in byte_syms] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(tokens)}, merges


def clip_tokenizer(pad_token: str = "<|endoftext|>", max_length: int = 77):
    """A CLIPTokenizer for SD1.x (pad with end token) or, with ``pad_token="!"``, for SD2 / SDXL's second encoder."""
    from transformers import CLIPTokenizer

    vocab, merges = _vocab_and_merges()
    return CLIPTokenizer(vocab=dict(vocab), merges=[tuple(m.split()) for m in merges], pad_token=pad_token, model_max_length=max_length)
