"""A1111 emphasis in captions (weighted_captions): which parts of a caption weigh how much.

``(text)`` multiplies the weight of ``text`` by 1.1, ``[text]`` divides it by 1.1, ``(text:1.3)`` multiplies it by
1.3; brackets nest (``((text))`` = 1.21) and a bracket never closed applies to the rest of the caption. ``\\(``,
``\\)``, ``\\[``, ``\\]`` and ``\\\\`` are the literal characters; a lone backslash is dropped. A ``)`` or ``]`` with
nothing open, and ``:`` elsewhere, are plain text. These are the rules sd-scripts (and A1111) apply; the text encoder
then scales each token's hidden state by the weight of the part it came from (``models.clip``).

No torch here.
"""

from __future__ import annotations

import re

UP = 1.1  # ( ... )
DOWN = 1 / 1.1  # [ ... ]

# One lexical piece of a caption, tried in this order.
_PIECE = re.compile(r"""
    (?P<escaped>\\[()\[\]\\]) | (?P<backslash>\\)
  | (?P<open_round>\() | (?P<open_square>\[)
  | :(?P<weight>[+-]?[.\d]+)\)
  | (?P<close_round>\)) | (?P<close_square>\])
  | (?P<text>[^\\()\[\]:]+ | :)
""", re.VERBOSE)


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:  # "1.2.3", "."
        return None


def parse_emphasis(caption: str) -> list[tuple[str, float]]:
    """``caption`` as (text, weight) parts, the brackets and escapes resolved, neighbours of equal weight joined.
    A weight that is no number (``(a:1.2.3)``) stays text, where sd-scripts stops with an error.

    >>> parse_emphasis("a (b:1.5) [c]")
    [('a ', 1.0), ('b', 1.5), (' ', 1.0), ('c', 0.9090909090909091)]
    """
    parts: list[list] = []  # [text, weight]
    rounds: list[int] = []  # where each open "(" starts in ``parts``
    squares: list[int] = []

    def scale(start: int, factor: float) -> None:
        for part in parts[start:]:
            part[1] *= factor

    for match in _PIECE.finditer(caption):
        kind, token = match.lastgroup, match.group(0)
        if kind in ("escaped", "backslash"):
            parts.append([token[1:], 1.0])  # a lone backslash: an empty part (no tokens)
        elif kind == "open_round":
            rounds.append(len(parts))
        elif kind == "open_square":
            squares.append(len(parts))
        elif kind == "weight" and rounds and _number(match.group("weight")) is not None:
            scale(rounds.pop(), _number(match.group("weight")))
        elif kind == "close_round" and rounds:
            scale(rounds.pop(), UP)
        elif kind == "close_square" and squares:
            scale(squares.pop(), DOWN)
        else:  # text, or a closing mark with nothing open
            parts.append([token, 1.0])
    for start in rounds:  # never closed: to the end of the caption
        scale(start, UP)
    for start in squares:
        scale(start, DOWN)
    joined: list[tuple[str, float]] = []
    for text, weight in parts:
        if joined and joined[-1][1] == weight:
            joined[-1] = (joined[-1][0] + text, weight)
        else:
            joined.append((text, weight))
    return joined or [("", 1.0)]


def token_weights(parts: list[tuple[str, float]], part_ids: list[list[int]],
                  limit: int) -> tuple[list[int], list[float]]:
    """The caption's token ids (each part tokenized on its own, without start and end tokens: ``part_ids``) and the
    weight of each, cut to ``limit`` tokens."""
    ids: list[int] = []
    weights: list[float] = []
    for (_, weight), piece in zip(parts, part_ids):
        ids += piece
        weights += [weight] * len(piece)
    return ids[:limit], weights[:limit]


def separator_inside_brackets(caption: str, separator: str) -> bool:
    """Whether ``separator`` occurs inside emphasis brackets: shuffling or dropping tags then splits the brackets
    (sd-scripts warns of this in its weighted_captions help)."""
    depth = 0
    for match in _PIECE.finditer(caption):
        kind = match.lastgroup
        if kind in ("open_round", "open_square"):
            depth += 1
        elif kind in ("close_round", "close_square", "weight") and depth:
            depth -= 1
        elif kind == "text" and depth and separator and separator in match.group(0):
            return True
    return False
