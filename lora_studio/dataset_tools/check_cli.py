"""``lora-studio dataset check``: the dataset health report."""

from __future__ import annotations

import argparse


def add_dataset_commands(parser: argparse.ArgumentParser) -> None:
    parser.add_subparsers(dest="dataset_tool", required=True)


def run_dataset_command(args: argparse.Namespace) -> int:
    raise NotImplementedError
