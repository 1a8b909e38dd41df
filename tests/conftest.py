"""Shared fixtures: tiny real SD1.x models built in-process (nothing downloaded) and helpers to run the real CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """The same tiny SD1.x model as a diffusers folder and as an A1111-style single-file checkpoint."""
    from lora_studio.models.tiny import build_tiny_sd1, save_diffusers_folder, save_single_file

    root = tmp_path_factory.mktemp("models")
    unet, vae, te, tok = build_tiny_sd1(seed=0)
    folder = save_diffusers_folder(root / "tiny-sd1", unet, vae, te, tok)
    single = save_single_file(root / "tiny-sd1.safetensors", unet, vae, te)
    return {"folder": folder, "single": single}


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


def run_cli(*args: str, timeout: int = 600, check: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([cli_path(), *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
    if check and proc.returncode != 0:
        raise AssertionError(f"lora-studio {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


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
    """One full ``lora-studio train`` run through the CLI, shared by the tests that inspect its outputs."""
    from lora_studio.demo import write_dataset

    root = tmp_path_factory.mktemp("run")
    data = write_dataset(root / "data", count=6, repeats=2)
    (root / "prompts.txt").write_text("# a comment\nlsdemo shape, red disc --n blurry --w 64 --h 64 --d 3 --s 3 --l 5\n"
                                      "another prompt --w 64 --h 64 --s 2\n", encoding="utf-8")
    settings = base_settings(tiny_models["folder"], data, root / "out", max_train_epochs=2, max_train_steps=None,
                             save_every_n_epochs=1, sample_prompts=str(root / "prompts.txt"),
                             sample_every_n_epochs=1, logging_dir=str(root / "log"), clip_skip=2,
                             training_comment="made by the test suite")
    settings.pop("max_train_steps")
    config = write_config(root / "run.toml", settings)
    proc = run_cli("train", "--config", str(config))
    return {"root": root, "out": root / "out", "config": config, "proc": proc,
            "file": root / "out" / "test_lora.safetensors", "model": tiny_models["folder"]}
