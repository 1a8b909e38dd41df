"""``lora-studio caption ...``: tag (WD14) or caption (BLIP) a folder of images."""

from __future__ import annotations

import argparse


def add_caption_commands(parser: argparse.ArgumentParser) -> None:
    parser.add_subparsers(dest="captioner", required=True)


def run_caption_command(args: argparse.Namespace) -> int:
    raise NotImplementedError
