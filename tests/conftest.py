"""Shared fixtures: tiny real SD1.x models built in-process (nothing downloaded) and helpers to run the real CLI.

The suite runs on ``pytest -n N`` workers (``./test.sh``), each with one CPU thread: the tiny models gain little from
threads and two single-thread workers keep two cores busy without their threads fighting. What several test files
read (the tiny models, the trained run) is built once for all workers (``built_once``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):  # one thread a worker (and for the processes its tests start)
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
REPO = Path(__file__).resolve().parents[1]

# Test files that take a minute or more of a worker: handed out first so that no worker is left with one at the end
# (pytest-xdist's --dist loadfile hands out whole files in the order they are collected).
LONGEST_FIRST = ["test_gui_browser.py", "test_gui_browser_runs_and_tabs.py", "test_resume.py", "test_train_cli.py",
                 "test_gui_runs.py", "test_training_options.py", "test_kohya_corpus.py", "test_lora_tools.py", "test_processes.py",
                 "test_lycoris.py", "test_step_guard.py", "test_sdxl.py", "test_gui_browser_test_and_grid.py",
                 "test_gui_browser_form_state.py", "test_gui_browser_settings_layout.py", "test_bench.py",
                 "test_flux_train.py", "test_lora_tools_flux.py", "test_flux_compat.py", "test_estimate_flux.py",
                 "test_flux_settings.py", "test_sd3_train.py", "test_anima_train.py", "test_lumina_train.py"]

# Modules whose tests need no training run, no trained file and no engine process: ``./test.sh --quick``.
QUICK = {"test_attention.py", "test_caption_edit.py", "test_captioning.py", "test_config.py", "test_data.py",
         "test_dataset_check.py", "test_kohya_import.py", "test_models.py", "test_network_and_optim.py",
         "test_network_types.py", "test_security.py", "test_weighted_captions.py", "test_estimate.py",
         "test_gui_units.py", "test_loss_options.py", "test_masked_loss.py", "test_fp8.py", "test_block_lora.py",
         "test_sampling.py", "test_lora_tools_families.py", "test_gui_tools.py", "test_io_utils.py",
         "test_file_hashes.py", "test_tool_inputs.py", "test_image_hash.py", "test_model_check.py",
         "test_gui_test_and_grid_units.py", "test_settings_layout.py", "test_gui_runs_and_tabs_units.py",
         "test_gui_flux.py", "test_flux_net.py", "test_flow_matching.py", "test_flux_parts.py",
         "test_kohya_import_flux.py", "test_estimate_calibration.py", "test_sd3_net.py", "test_sd3_parts.py",
         "test_anima_net.py", "test_anima_parts.py", "test_lumina_net.py", "test_kohya_import_dit.py"}


def pytest_configure(config):
    config.addinivalue_line("markers", "training: needs a training run, a trained file or an engine process "
                                       "(left out by ./test.sh --quick)")


def pytest_collection_modifyitems(config, items):
    import torch

    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)
    for item in items:
        name = item.path.name
        if name not in QUICK or "trained_run" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.training)
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file's own order is kept


def built_once(tmp_path_factory, name: str, build) -> tuple[Path, dict]:
    """``build(folder)`` run once for every worker of the session: the first worker builds in a folder all of them
    share while the others wait for it; each gets the folder and what ``build`` returned (JSON-able)."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the session's folder, above each worker's own
    folder, done = root / f"shared-{name}", root / f"shared-{name}.json"
    with FileLock(str(root / f"shared-{name}.lock")):
        if not done.exists():
            folder.mkdir(parents=True, exist_ok=True)
            done.write_text(json.dumps(build(folder)), encoding="utf-8")
    return folder, json.loads(done.read_text(encoding="utf-8"))


@pytest.fixture(scope="session", autouse=True)
def cache_dir_in_tmp(tmp_path_factory):
    """LoRA Studio's cache folder (the file-hash cache) in the session's temp folder, never the user's ~/.cache;
    the processes the tests start inherit it."""
    from lora_studio.file_hashes import CACHE_DIR_ENV

    os.environ[CACHE_DIR_ENV] = str(tmp_path_factory.mktemp("lora_studio_cache"))


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """The same tiny SD1.x model as a diffusers folder and as an A1111-style single-file checkpoint."""
    def build(root: Path) -> dict:
        from lora_studio.models.tiny import build_tiny_sd1, save_diffusers_folder, save_single_file

        unet, vae, te, tok = build_tiny_sd1(seed=0)
        folder = save_diffusers_folder(root / "tiny-sd1", unet, vae, te, tok)
        single = save_single_file(root / "tiny-sd1.safetensors", unet, vae, te)
        return {"folder": str(folder), "single": str(single)}

    _, paths = built_once(tmp_path_factory, "tiny-sd1", build)
    return {key: Path(value) for key, value in paths.items()}


@pytest.fixture
def dataset(tmp_path):
    """``img/10_lsdemo shape`` with 8 captioned images of the demo concept."""
    from lora_studio.demo import write_dataset

    return write_dataset(tmp_path / "data", count=8, repeats=2)


def write_config(path: Path, settings: dict) -> Path:
    from lora_studio.config import build_config, save_config

    save_config(build_config(settings).explicit(), path)
    return path


def base_settings(model: Path, train_dir: Path, out: Path, **extra) -> dict:
    settings = {"pretrained_model_name_or_path": str(model), "train_data_dir": str(train_dir),
                "output_dir": str(out), "output_name": "test_lora", "resolution": "64", "train_batch_size": 2,
                "max_train_steps": 6, "learning_rate": 1e-3, "network_dim": 4, "network_alpha": 2.0, "seed": 1234,
                "cache_latents": True}
    settings.update(extra)
    return settings


def cli_path() -> str:
    exe = Path(sys.executable).with_name("lora-studio")
    return str(exe) if exe.exists() else shutil.which("lora-studio")


def run_cli(*args: str, timeout: int = 600, check: bool = True, cwd: Path | None = None,
            subprocess_: bool = False) -> subprocess.CompletedProcess:
    """``lora-studio ARGS``: in this process through ``cli.main`` (the same parser, logging and exit codes, without
    a new Python importing torch), or as a real process with ``subprocess_=True`` where the process boundary is what
    a test checks (the console script's wiring, signals, a process's own memory)."""
    if subprocess_:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.run([cli_path(), *args], capture_output=True, text=True, timeout=timeout, env=env,
                              cwd=cwd)
    else:
        proc = run_in_process(list(args), cwd)
    if check and proc.returncode != 0:
        raise AssertionError(f"lora-studio {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def run_in_process(argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``cli.main(argv)`` with its standard output and error captured as a process's would be: an exception the CLI
    does not handle is printed as its traceback with exit code 1, as Python does. What a run changes in this process
    (logging, signal handlers, accelerate's state, the working folder) is put back."""
    import contextlib
    import io
    import logging
    import signal
    import traceback

    from accelerate.state import AcceleratorState

    from lora_studio import cli

    out, err = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    signals = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    here = os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main(argv)
            except SystemExit as exc:  # argparse: usage errors (2), --help (0)
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
                if not isinstance(exc.code, int) and exc.code is not None:
                    print(exc.code, file=sys.stderr)
            except BaseException:
                traceback.print_exc()
                code = 1
    finally:
        os.chdir(here)
        for sig, handler in signals.items():
            signal.signal(sig, handler)
        root.handlers[:] = handlers
        root.setLevel(level)
        AcceleratorState._reset_state(reset_partial_state=True)
    return subprocess.CompletedProcess(["lora-studio", *argv], code or 0, out.getvalue(), err.getvalue())


def launch_argv(config: Path, processes: int, machines: int = 1, machine_rank: int = 0,
                port: int | None = None) -> list[str]:
    """``accelerate launch`` of the engine on the CPU (gloo): ``processes`` in all, over ``machines``."""
    exe = Path(sys.executable).with_name("accelerate")
    args = [str(exe), "launch", "--num_machines", str(machines), "--mixed_precision", "no", "--dynamo_backend", "no",
            "--num_cpu_threads_per_process", "1", "--num_processes", str(processes)]
    args += ["--multi_gpu"] if processes > 1 else ["--cpu"]
    if machines > 1:
        args += ["--machine_rank", str(machine_rank), "--main_process_ip", "127.0.0.1", "--main_process_port",
                 str(port)]
    return args + ["-m", "lora_studio.train", "--config", str(config)]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def accelerate_launch(config: Path, processes: int, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MASTER_PORT": str(free_port())}
    proc = subprocess.run(launch_argv(config, processes), capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise AssertionError(f"accelerate launch failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="session")
def trained_run(tiny_models, tmp_path_factory):
    """One full ``lora-studio train`` run through the installed command (the train command's wiring as a process),
    shared by the tests that inspect its outputs."""
    def build(root: Path) -> dict:
        from lora_studio.demo import write_dataset

        data = write_dataset(root / "data", count=6, repeats=2)
        (root / "prompts.txt").write_text("# a comment\nlsdemo shape, red disc --n blurry --w 64 --h 64 --d 3 --s 3 "
                                          "--l 5\nanother prompt --w 64 --h 64 --s 2\n", encoding="utf-8")
        settings = base_settings(tiny_models["folder"], data, root / "out", max_train_epochs=2, max_train_steps=None,
                                 save_every_n_epochs=1, sample_prompts=str(root / "prompts.txt"),
                                 sample_every_n_epochs=1, logging_dir=str(root / "log"), clip_skip=2,
                                 training_comment="made by the test suite")
        settings.pop("max_train_steps")
        config = write_config(root / "run.toml", settings)
        proc = run_cli("train", "--config", str(config), subprocess_=True)
        return {"args": proc.args, "stdout": proc.stdout, "stderr": proc.stderr}

    root, done = built_once(tmp_path_factory, "trained-run", build)
    proc = subprocess.CompletedProcess(done["args"], 0, done["stdout"], done["stderr"])
    return {"root": root, "out": root / "out", "config": root / "run.toml", "proc": proc,
            "file": root / "out" / "test_lora.safetensors", "model": tiny_models["folder"]}


def flux_settings(models: dict, variant: str, data, out, **extra) -> dict:
    """A short tiny Flux run's settings: ``models[variant]`` from ``tiny_flux.write_tiny_flux``."""
    settings = {**models[variant], "train_data_dir": str(data), "output_dir": str(out), "output_name": "flux_lora",
                "resolution": "64", "train_batch_size": 2, "max_train_steps": 16, "learning_rate": 4e-3,
                "network_dim": 4, "network_alpha": 4.0, "seed": 7, "cache_latents": True, "validation_split": 0.25,
                "validate_every_n_steps": 8}
    settings.update(extra)
    return settings


@pytest.fixture(scope="session")
def flux_runs(tmp_path_factory):
    """One tiny model of each Flux variant (dev, schnell, chroma; dev under ComfyUI's model.diffusion_model.
    prefix) and one short training run of each (``out-<variant>/flux_lora.safetensors``), built once for every
    worker: (root, {"models": {variant: settings}, "data": image folder})."""
    def build(root):
        from lora_studio.demo import write_dataset
        from lora_studio.models.tiny_flux import VARIANTS, write_tiny_flux

        models = {v: write_tiny_flux(root / v, v, seed=3, comfy_prefix=v == "dev") for v in VARIANTS}
        data = write_dataset(root / "data", count=8, repeats=3)
        for variant in VARIANTS:
            config = write_config(root / f"{variant}.toml", flux_settings(models, variant, data, root / f"out-{variant}"))
            run_cli("train", "--config", str(config))
        return {"models": models, "data": str(data)}
    return built_once(tmp_path_factory, "flux-runs", build)
