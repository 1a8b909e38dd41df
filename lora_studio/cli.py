"""``lora-studio`` command line: train, demo, gui. Training options are generated from the config schema."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from typing import Any

from .config import SETTINGS, load_config
from .config import schema as S
from .errors import UserError

_LIST_KINDS = (S.STR_LIST, S.FLOAT_OR_LIST)


def _add_setting_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("settings (override the config file; names as in sd-scripts)")
    for setting in SETTINGS:
        kwargs: dict[str, Any] = {"dest": setting.name, "default": argparse.SUPPRESS, "metavar": "VALUE",
                                  "help": setting.help.replace("%", "%%")}
        if setting.kind == S.BOOL:
            kwargs.update(nargs="?", const="true", metavar="true|false")
        elif setting.kind in _LIST_KINDS:
            kwargs.update(nargs="+")
        group.add_argument(f"--{setting.name}", **kwargs)


# the denoisers lora_studio.bench builds
BENCH_MODELS = ("sd15", "sdxl", "flux-dev", "flux-schnell", "chroma", "sd3-medium", "sd3.5-medium", "sd3.5-large",
                "anima", "lumina2")


def add_bench_options(parser: argparse.ArgumentParser) -> None:
    """The options of ``lora-studio bench`` (and ``python -m lora_studio.bench``)."""
    parser.add_argument("--model", choices=BENCH_MODELS, default="sd15")
    parser.add_argument("--tiny", action="store_true", help="a tiny denoiser of the same topology (CPU, seconds)")
    parser.add_argument("--resolution", type=int, help="pixels (default 512 for sd15, 1024 for sdxl and Flux, "
                                                       "64 tiny)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--precision", choices=("bf16", "fp16", "no"), default="bf16")
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", nargs="?", const="inductor", default=None, metavar="BACKEND",
                        help="torch.compile our loop's denoiser with its LoRA (backend: inductor by default; "
                             "aot_eager on a CPU checks for graph breaks in seconds)")
    parser.add_argument("--compile-reference", action="store_true",
                        help="with --compile, compile the reference loop's model too (as diffusers' examples can); "
                             "by default it runs as diffusers' LoRA example does, eagerly")
    parser.add_argument("--compile-mode", default="default", choices=S.BY_NAME["dynamo_mode"].choices,
                        help="inductor's mode: reduce-overhead replays each step as CUDA graphs (small batches)")
    parser.add_argument("--no-reference", action="store_true", help="time only our loop")
    parser.add_argument("--device", help="cuda, cuda:1 or cpu (default: cuda when present)")
    parser.add_argument("--json", help="also write the report to this JSON file")
    engine = parser.add_argument_group("--train: the real engine on a real-size random checkpoint")
    engine.add_argument("--train", action="store_true",
                        help="write a random checkpoint of --model (tiny with --tiny) and synthetic images, train "
                             "--warmup + --steps steps with the engine, report the steady-state samples/s, the GPU "
                             "peak of each phase and the estimate beside them")
    engine.add_argument("--live-text-encoders", action="store_true",
                        help="encode the captions every step instead of caching the text encoders' outputs")
    memory = parser.add_argument_group("--memory: host RAM of loading and the first steps on real-size layouts")
    memory.add_argument("--memory", action="store_true",
                        help="write real-size SD1.5 (fp32) and SDXL (fp16) single-file checkpoints with random weights "
                             "and train a few CPU steps on each, reporting the RAM after each phase and the peak")
    memory.add_argument("--layouts", nargs="+", choices=("sd15", "sdxl"), default=["sd15", "sdxl"])
    memory.add_argument("--folder", help="where the checkpoints and runs go (--memory: lora-studio-memory-bench; "
                                         "--train: a temporary folder, removed afterwards)")
    memory.add_argument("--keep", action="store_true", help="keep the checkpoints for the next time")


def _add_compare_options(parser: argparse.ArgumentParser) -> None:
    from .compare_cli import add_compare_options

    add_compare_options(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lora-studio", description="Train LoRA adapters for Stable Diffusion.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a LoRA from a TOML config (sd-scripts keys)")
    train.add_argument("--config", "--config_file", dest="config_file",
                       help="training config (.toml), or a Kohya_ss GUI configuration (.json), imported as the GUI "
                            "imports it (the report says what was carried over, changed and left out)")
    train.add_argument("--allow-dir", action="append", default=None, metavar="FOLDER", dest="allow_dir",
                       help="confine the run: every path it reads or writes (settings, dataset TOML, in_json images, "
                            "caches, outputs, logs, states), links followed, must lie inside one of these folders "
                            "(repeat for more), and settings may name only known optimizers and schedulers. The GUI "
                            "passes its allowed folders when it listens on the network")
    _add_setting_options(train)

    demo = sub.add_parser("demo", help="write a tiny offline model, dataset and config to try everything on a CPU")
    demo.add_argument("folder", help="folder to create (must be empty or new)")
    demo.add_argument("--train", action="store_true", help="also run the demo training now")

    bench = sub.add_parser("bench", help="time LoRA training steps against a plain diffusers+peft loop")
    add_bench_options(bench)

    compare = sub.add_parser("compare", help="grids of a run's saved LoRA files x strengths, one per sample prompt")
    _add_compare_options(compare)

    lora = sub.add_parser("lora", help="LoRA file tools: inspect, resize, merge, extract, convert")
    from .lora_tools.cli import add_lora_commands

    add_lora_commands(lora)

    caption = sub.add_parser("caption", help="tag or caption a folder of images: wd14 (tags), blip (sentences)")
    from .dataset_tools.caption_cli import add_caption_commands

    add_caption_commands(caption)

    dataset = sub.add_parser("dataset", help="dataset tools: check (a health report before training)")
    from .dataset_tools.check_cli import add_dataset_commands

    add_dataset_commands(dataset)

    gui = sub.add_parser("gui", help="open the workbench in the browser")
    gui.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this computer only)")
    gui.add_argument("--port", type=int, default=7860)
    gui.add_argument("--no-browser", action="store_true", help="do not open a browser tab")
    gui.add_argument("--username", help="require this user name (needed to listen on a non-loopback address)")
    gui.add_argument("--password", help="require this password (with --username)")
    gui.add_argument("--insecure-no-auth", action="store_true",
                     help="listen on a non-loopback address WITHOUT a password (anyone on the network can read and "
                          "write files and start processes as you)")
    gui.add_argument("--allow-dir", action="append", default=None, metavar="FOLDER",
                     help="a folder the GUI may read and write (repeat for more). Paths typed in the page must then "
                          "lie inside one of them (or the state folder). Default: any folder when the GUI listens on "
                          "this computer only, your home folder when it listens on the network")
    gui.add_argument("--state-dir", default=os.environ.get("LORA_STUDIO_HOME", "~/.lora_studio"),
                     help="where runs, user presets and the demo are kept (default ~/.lora_studio)")
    return parser


class _TqdmSafeHandler(logging.StreamHandler):
    """Log lines printed above the progress bar instead of glued to its end."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
        except Exception:
            self.handleError(record)


def _setup_logging() -> None:
    rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))
    level = logging.INFO if rank == 0 else logging.WARNING
    handler = _TqdmSafeHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", datefmt="%H:%M:%S"))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    for noisy in ("transformers", "diffusers", "accelerate", "torch", "httpx", "urllib3", "PIL"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    # the user's own choice, before LoRA Studio turns accidental downloads off (a download the user needs, like
    # Flux's T5 tokenizer, still runs unless they chose offline)
    os.environ.setdefault("LORA_STUDIO_USER_HF_OFFLINE", os.environ.get("HF_HUB_OFFLINE", ""))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*should be kept in float32.*")
    warnings.filterwarnings("ignore", message=".*TypedStorage.*")


def setting_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given on the ``train`` command line (options that are not settings left out)."""
    return {k: v for k, v in vars(args).items() if k in S.BY_NAME}


def _run_train(args: argparse.Namespace) -> int:
    overrides = setting_overrides(args)
    if str(overrides.get("output_config", "")).lower() in ("true", "1"):
        return _output_config(args.config_file, {k: v for k, v in overrides.items() if k != "output_config"})
    from .config.kohya_import import is_kohya_json
    from .confinement import Confinement

    confinement = Confinement.of(args.allow_dir)
    if args.config_file:
        confinement.check(args.config_file, "--config")
    if args.config_file and is_kohya_json(args.config_file):
        from .config import load_kohya_config

        cfg, result = load_kohya_config(args.config_file, overrides, confinement)
        print(result.report(), flush=True)
    else:
        cfg = load_config(args.config_file, overrides)
    from .training.trainer import train

    train(cfg, confinement)
    return 0


def _output_config(path: str | None, settings: dict) -> int:
    """sd-scripts' --output_config: the settings given on the command line written to --config (a new file)."""
    from pathlib import Path

    from .config import build_config, save_config

    if not path:
        raise UserError("--output_config writes the settings to the --config file: give --config NEW.toml")
    if Path(path).exists():
        raise UserError(f"--output_config: {path} already exists; it is not overwritten (give a new file name)")
    save_config(build_config(settings).explicit(), path)
    print(f"wrote {path}")
    return 0


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def allowed_folders(host: str, allow_dir: list[str] | None):
    """The folders paths typed in the GUI must lie in: the --allow-dir folders; without them, none on this computer
    alone (loopback: the user's own files), and the home folder when the GUI listens on the network (a shared
    machine, other people's browsers)."""
    from pathlib import Path

    if allow_dir:
        return [Path(d) for d in allow_dir]
    return None if _is_loopback(host) else [Path.home()]


def _run_gui(args: argparse.Namespace) -> int:
    from pathlib import Path

    if bool(args.username) != bool(args.password):
        raise UserError("give both --username and --password, or neither")
    auth = (args.username, args.password) if args.username else None
    if not _is_loopback(args.host):
        if auth is None and not args.insecure_no_auth:
            raise UserError(f"--host {args.host} makes the GUI reachable from other computers; it can read and write "
                            "files and start processes as you. Add --username and --password (or, at your own risk, "
                            "--insecure-no-auth)")
        if auth is None:
            print("WARNING: listening on {} with NO password: anyone who can reach this port controls LoRA Studio "
                  "with your permissions.".format(args.host), file=sys.stderr)
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    from .gui.app import serve

    print(f"LoRA Studio: open http://{args.host if args.host != '0.0.0.0' else '127.0.0.1'}:{args.port} "
          "in your browser (Ctrl+C here closes the GUI; running trainings go on).", file=sys.stderr)
    serve(args.host, args.port, not args.no_browser, Path(args.state_dir), auth, allowed_folders(args.host,
                                                                                                args.allow_dir))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging()
    try:
        if args.command == "train":
            return _run_train(args)
        if args.command == "demo":
            from .demo import write_demo

            config = write_demo(args.folder)
            print(f"Demo written to {args.folder}.\nTrain it with:\n  lora-studio train --config {config}")
            if args.train:
                return main(["train", "--config", str(config)])
            return 0
        if args.command == "gui":
            return _run_gui(args)
        if args.command == "lora":
            from .lora_tools.cli import run_lora_command

            return run_lora_command(args)
        if args.command == "caption":
            from .dataset_tools.caption_cli import run_caption_command

            return run_caption_command(args)
        if args.command == "dataset":
            from .dataset_tools.check_cli import run_dataset_command

            return run_dataset_command(args)
        if args.command == "compare":
            from .compare_cli import run_compare

            return run_compare(args)
        if args.command == "bench":
            from .bench import main as bench_main

            return bench_main(args)
    except UserError as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nstopped", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
