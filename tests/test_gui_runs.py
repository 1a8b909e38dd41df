"""The GUI's run manager with the real engine: re-attach after a GUI restart, graceful stop, kill, failures."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from lora_studio.config import load_config
from lora_studio.gui.runs import RunManager

from conftest import run_cli


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    run_cli("demo", str(root / "demo"))
    return root / "demo"


def wait_for(predicate, timeout: float = 120, what: str = "condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_restarted_gui_reattaches_to_the_running_engine_and_stops_it_gracefully(demo, tmp_path):
    cfg = load_config(demo / "config.toml").replace(output_name="reattach", max_train_epochs=500,
                                                     sample_prompts=None, sample_every_n_epochs=None)
    first = RunManager(tmp_path / "state", poll_seconds=0.2)
    rec = first.enqueue(cfg)
    assert rec.status == "running" and rec.pid
    wait_for(lambda: first.live(rec).step >= 3, what="training steps")
    first.close()  # the GUI goes away; the engine must not notice

    second = RunManager(tmp_path / "state", poll_seconds=0.2)
    active = second.active()
    assert active is not None and active.id == rec.id
    step = second.live(active).step
    wait_for(lambda: second.live(active).step > step + 2, what="more steps after the restart")
    assert "saves after the current step" in second.stop()
    done = wait_for(lambda: next((r for r in second.history() if r.id == rec.id), None), what="the stop")
    assert done.status == "stopped", done.message
    final = demo / "output" / "reattach.safetensors"
    assert final.is_file() and str(final) in done.message
    assert not (demo / "output" / "reattach.stop").exists()
    second.close()


def test_a_second_stop_ends_the_engine_at_once(demo, tmp_path):
    cfg = load_config(demo / "config.toml").replace(output_name="killed", max_train_epochs=500)
    manager = RunManager(tmp_path / "state", poll_seconds=0.2)
    rec = manager.enqueue(cfg)
    assert "saves after the current step" in manager.stop()  # while the engine is still starting up
    assert "at once" in manager.stop()
    done = wait_for(lambda: next(iter(manager.history()), None), timeout=30, what="the kill")
    assert done.status == "killed" and done.id == rec.id
    assert not (demo / "output" / "killed.safetensors").exists()
    manager.close()


def test_an_engine_failure_is_reported_with_its_reason(demo, tmp_path):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"this is not a checkpoint")
    cfg = load_config(demo / "config.toml").replace(output_name="broken", pretrained_model_name_or_path=str(broken))
    manager = RunManager(tmp_path / "state", poll_seconds=0.2)
    manager.enqueue(cfg)
    done = wait_for(lambda: next(iter(manager.history()), None), what="the failure")
    assert done.status == "failed"
    assert "broken.safetensors" in done.message, done.message
    assert "Traceback" not in done.message
    assert Path(done.log).is_file()
    manager.close()


def test_resume_last_run_continues_a_killed_run_from_its_state(demo, tmp_path):
    cfg = load_config(demo / "config.toml").replace(output_name="resumable", max_train_epochs=3, save_state=True,
                                                     save_every_n_steps=10, sample_prompts=None,
                                                     sample_every_n_epochs=None, save_every_n_epochs=None)
    manager = RunManager(tmp_path / "state", poll_seconds=0.2)
    assert manager.resume_last() == "There is no stopped or failed run to resume."
    rec = manager.enqueue(cfg)
    wait_for(lambda: (demo / "output" / "resumable-step00000010-state" / "state.json").is_file(),
             what="a saved state")
    manager.stop()
    assert "at once" in manager.stop()
    wait_for(lambda: next((r for r in manager.history() if r.id == rec.id), None), what="the kill")
    message = manager.resume_last()
    assert "from resumable-step000000" in message, message
    done = wait_for(lambda: next((r for r in manager.history() if r.id != rec.id and r.status != "cancelled"),
                                 None), timeout=180, what="the resumed run")
    assert done.status == "completed", done.message
    assert "resuming from" in Path(done.log).read_text(encoding="utf-8")
    assert (demo / "output" / "resumable.safetensors").is_file()
    manager.close()
