"""Caption files: read them in whatever encoding they were saved, and vary them per step as sd-scripts does."""

from __future__ import annotations

import dataclasses
import math
import random
import re
from pathlib import Path

_BOMS = ((b"\xef\xbb\xbf", "utf-8"), (b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be"))


def read_caption_lines(path: Path) -> list[str]:
    """The non-empty lines of a caption file: UTF-8 (with or without BOM), UTF-16 with BOM, Shift-JIS (cp932) or
    cp1252. sd-scripts trains on the first, or on a random one with enable_wildcard."""
    data = path.read_bytes()
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            text = data[len(bom):].decode(encoding, errors="replace")
            break
    else:
        for encoding in ("utf-8", "cp932", "cp1252"):
            try:
                text = data.decode(encoding)
                break
            except UnicodeDecodeError:
                continue
        else:
            text = data.decode("utf-8", errors="replace")
    return [line.strip() for line in text.replace("\r", "\n").split("\n") if line.strip()]


def read_caption(path: Path) -> str:
    lines = read_caption_lines(path)
    return lines[0] if lines else ""


def steady_rules(rules):
    """A subset's caption rules without their random parts (shuffle, dropout, warm-up): the caption as validation
    measures it and as the dataset check reads it."""
    return dataclasses.replace(rules, shuffle_caption=False, caption_dropout_rate=0.0, caption_tag_dropout_rate=0.0,
                               caption_dropout_every_n_epochs=0, token_warmup_step=0)


def _wildcards(caption: str, rng: random.Random) -> str:
    """sd-scripts' enable_wildcard: each {a|b|c} becomes one of its choices; {{ and }} are literal braces."""
    open_mark, close_mark = "\u2985", "\u2986"
    while open_mark in caption or close_mark in caption:
        open_mark, close_mark = open_mark + "\u2985", close_mark + "\u2986"
    caption = caption.replace("{{", open_mark).replace("}}", close_mark)
    caption = re.sub(r"\{([^}]+)\}", lambda m: rng.choice(m.group(1).split("|")), caption)
    return caption.replace(open_mark, "{").replace(close_mark, "}")


def vary_caption(caption: str, rng: random.Random, rules, epoch: int = 1, lines: list[str] | None = None,
                 step: int = 0, total_steps: int = 0) -> str:
    """One training-time version of ``caption`` as sd-scripts' process_caption makes it, with the subset's
    ``rules``: caption_prefix / caption_suffix; dropped whole (caption_dropout_rate, or every
    caption_dropout_every_n_epochs-th epoch); with enable_wildcard a random line of the file and {a|b} choices;
    then, when shuffling or dropping tags, the tags (split at caption_separator) after the first keep_tokens (or
    between the keep_tokens_separator marks: "fixed ||| shuffled ||| fixed at the end") cut to the token warm-up's
    length at this ``step``, shuffled and dropped; last, secondary_separator becomes caption_separator (tags joined
    by it move as one)."""
    if lines and rules.enable_wildcard:
        caption = rng.choice(lines)
    if rules.caption_prefix:
        caption = f"{rules.caption_prefix} {caption}"
    if rules.caption_suffix:
        caption = f"{caption} {rules.caption_suffix}"
    every = rules.caption_dropout_every_n_epochs
    if (rules.caption_dropout_rate > 0 and rng.random() < rules.caption_dropout_rate) or (every and epoch % every == 0):
        return ""
    if rules.enable_wildcard:
        caption = _wildcards(caption, rng)
    separator = rules.caption_separator
    warmup = rules.token_warmup_step
    if 0 < warmup < 1:  # a share of the run's steps
        warmup = math.floor(warmup * total_steps)
    if rules.shuffle_caption or rules.caption_tag_dropout_rate > 0 or warmup > 0:
        marker = rules.keep_tokens_separator
        suffix: list[str] = []
        if marker and marker in caption:
            fixed_part, flex_part = caption.split(marker, 1)
            if marker in flex_part:
                flex_part, suffix_part = flex_part.split(marker, 1)
                suffix = [t.strip() for t in suffix_part.split(separator) if t.strip()]
            fixed = [t.strip() for t in fixed_part.split(separator) if t.strip()]
            flex = [t.strip() for t in flex_part.split(separator) if t.strip()]
        else:
            tags = [t.strip() for t in caption.strip().split(separator)]
            fixed, flex = tags[:rules.keep_tokens], tags[rules.keep_tokens:]
        if warmup and step < warmup:  # token warm-up: token_warmup_min tags at first, all of them at the end
            flex = flex[:math.floor(step * (len(flex) - rules.token_warmup_min) / warmup) + rules.token_warmup_min]
        if rules.shuffle_caption:
            rng.shuffle(flex)
        if rules.caption_tag_dropout_rate > 0:
            flex = [t for t in flex if rng.random() >= rules.caption_tag_dropout_rate]
        caption = ", ".join(fixed + flex + suffix)
    if rules.secondary_separator:
        caption = caption.replace(rules.secondary_separator, separator)
    return caption
