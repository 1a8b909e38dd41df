"""Several processes and machines through accelerate (gloo on the CPU): one decision for all processes when only one
meets a non-finite loss, and two machines on loopback training the same weights as two processes on one."""

from __future__ import annotations

import os
import subprocess
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import accelerate_launch, base_settings, free_port, launch_argv, run_cli, write_config
from lora_studio.training.events import read_events


def _settings(model, data, out, **extra):
    # 9 images, batch 2: 5 batches an epoch, 3 for each of 2 processes (one batch repeated); accumulation 2 syncs
    # after the 2nd and at the epoch's end (2 steps an epoch). clip_skip 2 leaves the last text-encoder layer's
    # adapters without a gradient. The latents cached on disk: the main process writes them, the other waits.
    settings = base_settings(model, data, out, max_train_epochs=2, gradient_accumulation_steps=2, clip_skip=2,
                             output_name="multi", save_every_n_epochs=1, cache_latents_to_disk=True)
    settings.pop("max_train_steps")
    settings.update(extra)
    return settings


@pytest.fixture(scope="module")
def two_processes(tiny_models, tmp_path_factory):
    from lora_studio.demo import write_dataset

    root = tmp_path_factory.mktemp("processes")
    data = write_dataset(root / "data", count=9, repeats=1)
    config = write_config(root / "run.toml", _settings(tiny_models["folder"], data, root / "out"))
    proc = accelerate_launch(config, 2)
    return {"root": root, "data": data, "model": tiny_models["folder"], "proc": proc,
            "weights": load_file(str(root / "out" / "multi.safetensors"))}


def test_two_processes_sync_accumulate_and_agree(two_processes):
    events = read_events(two_processes["root"] / "out" / "multi_events.jsonl")
    assert events[0]["total_steps"] == 4 and events[0]["steps_per_epoch"] == 2
    assert [e["step"] for e in events if e["type"] == "step"] == [1, 2, 3, 4]
    assert events[-1]["status"] == "completed" and events[-1]["step"] == 4
    assert "all 2 processes ended at step 4" in two_processes["proc"].stderr and "2 process(es)" in \
        two_processes["proc"].stderr
    assert [e["type"] for e in events].count("start") == 1  # only the main process writes events
    out = two_processes["root"] / "out"
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["multi-000001.safetensors", "multi.safetensors"]


def _wait_all(processes: list[subprocess.Popen], timeout: float) -> list[int]:
    """Exit codes of all, or as soon as one fails (its partner would wait for it until the timeout)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        codes = [p.poll() for p in processes]
        if all(c is not None for c in codes) or any(c not in (None, 0) for c in codes):
            return codes
        time.sleep(0.2)
    raise AssertionError(f"still running after {timeout} s: a hang")


def _steps_drawing(config, image: str) -> list[int]:
    """The steps in which some process trains ``image`` (from the engine's own epoch plan and sharding)."""
    from lora_studio.config import load_config
    from lora_studio.data.dataset import TrainingData, shard_batches
    from lora_studio.data.sources import datasets_from_config

    cfg = load_config(config)
    data = TrainingData(datasets_from_config(cfg), cfg.prior_loss_weight, cfg.seed)
    index = next(i for i, item in enumerate(data.items) if item.path.name == image)
    steps = set()
    for epoch in range(1, cfg.max_train_epochs + 1):
        for rank in (0, 1):
            for k, batch in enumerate(shard_batches(data.plan_epoch(epoch), rank, 2)):
                if any(i == index for i, _ in batch):
                    steps.add((epoch - 1) * 3 + k + 1)
    return sorted(steps)


MACHINE_CONFIG = """compute_environment: LOCAL_MACHINE
distributed_type: MULTI_GPU
num_machines: 2
machine_rank: {rank}
num_processes: 2
main_process_ip: 127.0.0.1
main_process_port: {port}
mixed_precision: 'no'
rdzv_backend: static
same_network: true
"""


def test_two_machines_on_loopback_train_the_same_weights_as_two_processes(two_processes, tmp_path):
    """Machine 0 is launched with an accelerate config file as the README shows it, machine 1 with the options."""
    out = tmp_path / "out"
    config = write_config(tmp_path / "run.toml", _settings(two_processes["model"], two_processes["data"], out))
    port = free_port()
    (tmp_path / "machine0.yaml").write_text(MACHINE_CONFIG.format(rank=0, port=port), encoding="utf-8")
    accelerate = launch_argv(config, 2)[0]
    commands = [[accelerate, "launch", "--config_file", str(tmp_path / "machine0.yaml"), "-m", "lora_studio.train",
                 "--config", str(config)], launch_argv(config, 2, machines=2, machine_rank=1, port=port)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    logs = [tmp_path / f"machine{rank}.log" for rank in (0, 1)]
    machines = [subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=log.open("w"))
                for argv, log in zip(commands, logs)]
    try:
        codes = _wait_all(machines, timeout=300)  # a hang fails here
    finally:
        for m in machines:
            m.kill()
    texts = [log.read_text(encoding="utf-8", errors="replace") for log in logs]
    assert codes == [0, 0], texts[0][-3000:] + texts[1][-3000:]
    assert "all 2 processes ended at step 4" in texts[0]
    events = read_events(out / "multi_events.jsonl")
    assert [e["type"] for e in events].count("start") == 1  # written by the main process of machine 0 alone
    weights = load_file(str(out / "multi.safetensors"))
    assert set(weights) == set(two_processes["weights"])
    for key, value in weights.items():
        assert torch.allclose(value.float(), two_processes["weights"][key].float(), atol=1e-6, rtol=0), key


CACHED = dict(cache_latents_to_disk=True, gradient_accumulation_steps=1)


@pytest.fixture(scope="module")
def poisoned_data(two_processes, tmp_path_factory):
    """A copy of the images whose latent cache holds NaN for 004.png."""
    import shutil

    root = tmp_path_factory.mktemp("poisoned")
    shutil.copytree(two_processes["data"].parent, root / "data")
    warm = write_config(root / "warm.toml", _settings(two_processes["model"], root / "data" / "img", root / "warm",
                                                     max_train_epochs=None, max_train_steps=1, **CACHED))
    run_cli("train", "--config", str(warm))
    (poisoned,) = list(root.glob("data/img/*/.lora_studio_cache/004_*.safetensors"))
    latent = load_file(str(poisoned))["latent"]
    save_file({"latent": torch.full_like(latent, float("nan"))}, str(poisoned))
    return root / "data"


@pytest.mark.parametrize("sync_every", [1, 3])
def test_a_nan_in_one_process_is_one_decision_for_all(two_processes, poisoned_data, tmp_path, sync_every):
    """One image's cached latent is NaN: the process that draws it has a non-finite loss; every process skips (or
    zeroes) that step, nobody waits in a reduction the others left, and all end together."""
    data, cache = poisoned_data, CACHED
    out = tmp_path / "out"
    config = write_config(tmp_path / "run.toml", _settings(two_processes["model"], data / "img", out,
                                                           sync_every_n_steps=sync_every, **cache))
    proc = accelerate_launch(config, 2, timeout=300)  # a hang fails here instead of blocking the suite
    assert "all 2 processes ended at step 6" in proc.stderr
    events = read_events(out / "multi_events.jsonl")
    bad = [e for e in events if e["type"] == "step" and e.get("bad")]
    assert [e["step"] for e in bad] == _steps_drawing(config, "004.png") and bad  # one process or both drew it
    assert all(e["bad"] == "loss" and e["loss"] is None for e in bad)
    assert events[-1]["status"] == "completed" and events[-1]["step"] == 6
    weights = load_file(str(out / "multi.safetensors"))
    assert all(bool(torch.isfinite(v.float()).all()) for v in weights.values())
