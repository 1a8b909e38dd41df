"""The step guard under fp16 loss scaling, reached on the CPU: accelerate's GradScaler path with a CPU GradScaler
(``LORA_STUDIO_TEST_CPU_GRAD_SCALER``) and gradients forced to inf on chosen steps (``LORA_STUDIO_TEST_OVERFLOW_STEPS``),
as fp16 overflows do on a GPU's first steps."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from conftest import base_settings, run_cli, write_config

def _events(out, name="test_lora"):
    return [json.loads(line) for line in (out / f"{name}_events.jsonl").read_text(encoding="utf-8").splitlines()]


def test_fp16_overflows_on_the_first_steps_lower_the_scale_and_the_run_goes_on(tiny_models, dataset, tmp_path,
                                                                                monkeypatch):
    monkeypatch.setenv("LORA_STUDIO_TEST_CPU_GRAD_SCALER", "1")
    monkeypatch.setenv("LORA_STUDIO_TEST_OVERFLOW_STEPS", "1,2,3,4,5")  # more than three in a row
    out = tmp_path / "out"
    settings = base_settings(tiny_models["folder"], dataset, out, mixed_precision="fp16", max_train_steps=8,
                             save_state_on_train_end=True, save_every_n_steps=5, lr_scheduler="linear")
    proc = run_cli("train", "--config", str(write_config(tmp_path / "run.toml", settings)))
    assert "fp16 loss scaling simulated on the CPU" in proc.stderr
    assert proc.stderr.count("fp16 gradients overflowed") == 5 and "diverged" not in proc.stderr
    events = _events(out)
    assert events[-1]["type"] == "end" and events[-1]["status"] == "completed" and events[-1]["step"] == 8
    steps = [e for e in events if e["type"] == "step"]
    assert [e["step"] for e in steps] == list(range(1, 9)) and all(e["loss"] is not None for e in steps)
    # The scaler skipped the five overflowing steps: the adapters are still untrained (up = 0) at step 5 ...
    at_step_5 = load_file(str(out / "test_lora-step00000005.safetensors"))
    assert all(not v.any() for k, v in at_step_5.items() if k.endswith("lora_up.weight"))
    final = load_file(str(out / "test_lora.safetensors"))
    assert any(v.any() for k, v in final.items() if k.endswith("lora_up.weight"))
    assert all(bool(torch.isfinite(v.float()).all()) for v in final.values())
    # ... halved its scale once per overflow, and the learning-rate schedule only advanced on the 3 real steps.
    state = json.loads((out / "test_lora-state" / "state.json").read_text(encoding="utf-8"))
    assert dict(state["scaler"]["__dict__"])["scale"] == 65536.0 / 2**5
    scheduler = dict(state["scheduler"]["__dict__"])
    assert scheduler["last_epoch"] == 3


def test_a_real_divergence_under_fp16_still_stops_with_advice(tiny_models, dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_STUDIO_TEST_CPU_GRAD_SCALER", "1")
    out = tmp_path / "out"
    settings = base_settings(tiny_models["folder"], dataset, out, mixed_precision="fp16", learning_rate=10,
                             max_grad_norm=0, max_train_steps=60, save_every_n_steps=1, output_name="run")
    proc = run_cli("train", "--config", str(write_config(tmp_path / "run.toml", settings)), check=False)
    assert proc.returncode == 2, proc.stderr[-1500:]
    assert "training diverged" in proc.stderr and "lower the learning rate (now 10)" in proc.stderr
    assert 'use mixed_precision = "bf16"' in proc.stderr
    assert not (out / "run.safetensors").exists()  # never a final file from broken weights
    saved = sorted(out.glob("run-step*.safetensors"))
    assert saved
    for path in saved:
        assert all(bool(torch.isfinite(t.float()).all()) for t in load_file(str(path)).values()), path
    assert _events(out, "run")[-1]["kind"] == "diverged"


@pytest.mark.parametrize("sync_every", [1, 4])
def test_without_a_scaler_overflowing_steps_are_skipped_or_zeroed_and_counted(tiny_models, dataset, tmp_path,
                                                                             monkeypatch, sync_every):
    """No scaler: the same injected overflow is a bad step (skipped, or trained on zeroed gradients when the loss
    is read back every N steps); three in a row end the run."""
    monkeypatch.setenv("LORA_STUDIO_TEST_OVERFLOW_STEPS", "2,3,4")
    out = tmp_path / "out"
    settings = base_settings(tiny_models["folder"], dataset, out, max_train_steps=6, output_name="run",
                             sync_every_n_steps=sync_every, save_every_n_steps=1)
    proc = run_cli("train", "--config", str(write_config(tmp_path / "run.toml", settings)), check=False)
    assert proc.returncode == 2 and "training diverged at step 4: the gradients stayed non-finite" in proc.stderr
    assert ("trained on zeroed gradients" if sync_every > 1 else "step skipped") in proc.stderr
    step1 = load_file(str(out / "run-step00000001.safetensors"))
    for name in ("run-step00000002.safetensors", "run-step00000003.safetensors"):
        later = load_file(str(out / name))
        assert all(bool(torch.isfinite(v.float()).all()) for v in later.values())
        if sync_every == 1:  # a skipped step leaves the weights as they were
            assert all(torch.equal(step1[k], later[k]) for k in step1)
    assert not os.path.exists(out / "run.safetensors")


def test_a_fused_optimizer_decides_on_the_device_and_every_step_is_reported_once_with_its_own_rate(
        tiny_models, dataset, tmp_path):
    """AdamW (fused) skips a bad step on the device: the host reads each step's check one step late, while the next
    one runs; every step is still reported, in order, with the learning rate it trained with."""
    out = tmp_path / "out"
    settings = base_settings(tiny_models["folder"], dataset, out, max_train_steps=6, output_name="run",
                             lr_scheduler="linear", lr_warmup_steps=0, learning_rate=6e-3)
    run_cli("train", "--config", str(write_config(tmp_path / "run.toml", settings)))
    steps = [e for e in _events(out, "run") if e["type"] == "step"]
    assert [e["step"] for e in steps] == [1, 2, 3, 4, 5, 6]
    assert [e["lr"] for e in steps] == pytest.approx([6e-3 * (6 - k) / 6 for k in range(6)])  # linear decay


def test_the_guard_knows_which_optimizers_skip_on_the_device():
    from lora_studio.training.guard import _skips_on_device

    param = torch.nn.Parameter(torch.zeros(2))
    assert _skips_on_device(torch.optim.AdamW([param], fused=True))
    assert not _skips_on_device(torch.optim.AdamW([param], foreach=False))
    assert not _skips_on_device(torch.optim.SGD([param], lr=0.1))
