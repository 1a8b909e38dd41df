"""save_state / resume: a run killed (SIGKILL) at random moments and resumed ends with the weights of a run that was
never interrupted; checkpoints survive a kill while being written; a diverging run stops with advice."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import base_settings, cli_path, run_cli, write_config

pytestmark = pytest.mark.skipif(os.name == "nt", reason="SIGKILL is POSIX")


def _settings(model, data, out, **extra):
    settings = dict(output_name="run", max_train_steps=None, max_train_epochs=3, save_state=True,
                    save_every_n_steps=3, shuffle_caption=True, caption_dropout_rate=0.2, lr_scheduler="cosine",
                    lr_warmup_steps=2, noise_offset=0.05, network_dropout=0.1)
    return base_settings(model, data, out, **{**settings, **extra})


@pytest.fixture(scope="module")
def setup(tiny_models, tmp_path_factory):
    from lora_studio.demo import write_dataset

    root = tmp_path_factory.mktemp("resume")
    data = write_dataset(root / "data", count=8, repeats=2)  # 16 samples, batch 2: 8 steps an epoch, 24 in all
    config = write_config(root / "straight.toml", _settings(tiny_models["folder"], data, root / "straight"))
    run_cli("train", "--config", str(config))
    return {"root": root, "data": data, "model": tiny_models["folder"],
            "reference": load_file(str(root / "straight" / "run.safetensors"))}


def _steps_done(events: Path) -> int:
    if not events.exists():
        return 0
    steps = [json.loads(line)["step"] for line in events.read_text(encoding="utf-8").splitlines()
             if line.endswith("}") and '"type": "step"' in line]
    return max(steps, default=0)


def _kill_at(config: Path, events: Path, at_step: int, extra: list[str] = ()) -> None:
    proc = subprocess.Popen([cli_path(), "train", "--config", str(config), *extra], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while _steps_done(events) < at_step:
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _assert_same_weights(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-3, rtol=0), key


def test_killed_and_resumed_runs_end_with_the_uninterrupted_weights(setup, tmp_path):
    """Three kills at random steps (the first from a fresh start, the others from a resumed state), then a resume
    to the end: the same weights as the run that was never stopped."""
    kills = 3
    out = tmp_path / "out"
    config = write_config(tmp_path / "run.toml", _settings(setup["model"], setup["data"], out))
    events = out / "run_events.jsonl"
    rng = random.Random(kills)
    for n in range(kills):
        at = 4 + n * 7 + rng.randint(0, 3)  # 24 steps in all: kills at 4-7, 11-14, 18-21
        _kill_at(config, events, at, [] if n == 0 else ["--resume", "latest"])
        assert not (out / "run.safetensors").exists()
    proc = run_cli("train", "--config", str(config), "--resume", "latest")
    assert "resuming from" in proc.stderr
    _assert_same_weights(load_file(str(out / "run.safetensors")), setup["reference"])
    end = [json.loads(line) for line in events.read_text(encoding="utf-8").splitlines()][-1]
    assert end["type"] == "end" and end["status"] == "completed" and end["step"] == 24  # cumulative steps


def test_a_state_from_another_run_is_refused_saying_what_differs(setup, tmp_path):
    state = next((setup["root"] / "straight").glob("run-step00000003-state"))
    for extra, message in (({"network_dim": 8}, "network_dim was 4, now 8"),
                           ({"learning_rate": 5e-3}, "learning_rate was 0.001, now 0.005")):
        settings = _settings(setup["model"], setup["data"], tmp_path / "o", resume=str(state), **extra)
        proc = run_cli("train", "--config", str(write_config(tmp_path / "r.toml", settings)), check=False)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-500:]
    from lora_studio.demo import write_dataset

    other = write_dataset(tmp_path / "other", count=5, repeats=2)
    settings = _settings(setup["model"], other, tmp_path / "o", resume=str(state))
    proc = run_cli("train", "--config", str(write_config(tmp_path / "d.toml", settings)), check=False)
    assert proc.returncode == 2 and "the dataset changed: 8 images in the state, 5 now" in proc.stderr


def test_a_kill_while_a_checkpoint_is_written_leaves_the_previous_file(setup, tmp_path):
    out = tmp_path / "out"
    settings = _settings(setup["model"], setup["data"], out, max_train_epochs=1, save_every_n_steps=None,
                         save_state=False)
    config = write_config(tmp_path / "run.toml", settings)
    run_cli("train", "--config", str(config))
    before = load_file(str(out / "run.safetensors"))
    env = {**os.environ, "LORA_STUDIO_TEST_PAUSE_BEFORE_RENAME": "30"}  # writes pause before the rename
    proc = subprocess.Popen([cli_path(), "train", "--config", str(config), "--learning_rate", "0.01"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list(out.glob(".run.safetensors.*.tmp")):
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    time.sleep(0.5)  # the new file is fully written, not yet renamed
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    after = load_file(str(out / "run.safetensors"))  # still the old, complete file
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_diverging_run_stops_with_advice_and_keeps_the_last_good_file(setup, tmp_path):
    out = tmp_path / "out"
    settings = _settings(setup["model"], setup["data"], out, learning_rate=10, save_every_n_steps=1,
                         save_state=False, max_train_epochs=2, lr_warmup_steps=0,
                         max_grad_norm=0)
    proc = run_cli("train", "--config", str(write_config(tmp_path / "run.toml", settings)), check=False)
    assert proc.returncode == 2, proc.stderr[-800:]
    assert "training diverged" in proc.stderr and "lower the learning rate (now 10)" in proc.stderr
    assert not (out / "run.safetensors").exists()  # never a final file from broken weights
    saved = sorted(out.glob("run-step*.safetensors"))
    assert saved, "a checkpoint before the divergence"
    for path in saved:
        assert all(torch.isfinite(t.float()).all() for t in load_file(str(path)).values()), path
    events = [json.loads(line) for line in (out / "run_events.jsonl").read_text().splitlines()]
    assert events[-1]["type"] == "error" and events[-1]["kind"] == "diverged"


def test_nan_policy_rollback_continues_with_a_lower_learning_rate(setup, tmp_path):
    settings = _settings(setup["model"], setup["data"], tmp_path / "out", learning_rate=10, save_state=False,
                         save_every_n_steps=None, max_train_epochs=3, lr_warmup_steps=0,
                         max_grad_norm=0, nan_policy="rollback")
    proc = run_cli("train", "--config", str(write_config(tmp_path / "run.toml", settings)), check=False)
    assert "rolled back to the weights of step" in proc.stderr, proc.stderr[-800:]


def test_out_of_memory_advice_names_the_settings_with_their_numbers():
    from lora_studio.config import build_config
    from lora_studio.training.trainer import _oom_advice

    advice = _oom_advice(build_config({"train_batch_size": 4, "resolution": "1024", "optimizer_type": "AdamW"}))
    for text in ("lower train_batch_size (now 4)", "gradient_checkpointing = true", "cache_latents = true",
                 "AdamW8bit", "lower the resolution (now 1024)", 'mixed_precision = "bf16"'):
        assert text in advice, text
    calm = _oom_advice(build_config({"gradient_checkpointing": True, "cache_latents": True,
                                     "mixed_precision": "bf16", "optimizer_type": "AdamW8bit"}))
    assert "gradient_checkpointing" not in calm and "train_batch_size" not in calm


def test_reading_the_loss_back_every_n_steps_reports_every_step_and_still_guards(setup, tmp_path):
    settings = _settings(setup["model"], setup["data"], tmp_path / "out", save_state=False, save_every_n_steps=None,
                         max_train_epochs=2, sync_every_n_steps=4)
    run_cli("train", "--config", str(write_config(tmp_path / "run.toml", settings)))
    events = [json.loads(line) for line in (tmp_path / "out" / "run_events.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e["type"] == "step"] == list(range(1, 17))
    assert events[-1]["type"] == "end" and events[-1]["status"] == "completed"
    weights = load_file(str(tmp_path / "out" / "run.safetensors"))
    assert all(bool(torch.isfinite(v.float()).all()) for v in weights.values())

    diverging = _settings(setup["model"], setup["data"], tmp_path / "out2", learning_rate=10, save_state=False,
                          save_every_n_steps=None, max_train_epochs=3, lr_warmup_steps=0, max_grad_norm=0,
                          sync_every_n_steps=4)
    proc = run_cli("train", "--config", str(write_config(tmp_path / "d.toml", diverging)), check=False)
    assert proc.returncode == 2 and "training diverged" in proc.stderr, proc.stderr[-600:]
    assert not (tmp_path / "out2" / "run.safetensors").exists()
