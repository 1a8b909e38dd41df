"""Pause in place: the engine waits with the model in memory, renders test requests on its current weights, and
resumes to the very weights of a run that never paused."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import base_settings, cli_path, write_config
from lora_studio.training.pause import RenderRequest


def _events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _wait_for(check, proc: subprocess.Popen, what: str, timeout: float = 180):
    end = time.time() + timeout
    while time.time() < end:
        found = check()
        if found:
            return found
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before {what}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_pause_test_and_resume_give_the_weights_of_an_unpaused_run(tiny_models, dataset, tmp_path):
    def settings(out: Path) -> dict:
        return base_settings(tiny_models["folder"], dataset, out, max_train_steps=6, network_dropout=0.1)

    straight = tmp_path / "straight"  # the run that never pauses, beside the paused one (the machine's 2nd core)
    straight_log = (tmp_path / "straight.log").open("w")
    reference = subprocess.Popen([cli_path(), "train", "--config",
                                  str(write_config(tmp_path / "straight.toml", settings(straight)))],
                                 stdout=straight_log, stderr=subprocess.STDOUT)

    paused = tmp_path / "paused"
    paused.mkdir()
    (paused / "test_lora.pause").touch()  # pause after the first step
    config = write_config(tmp_path / "paused.toml", settings(paused))
    log = (tmp_path / "paused.log").open("w")  # a file, not a pipe: a full pipe would block the run
    proc = subprocess.Popen([cli_path(), "train", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        events = paused / "test_lora_events.jsonl"
        stop = _wait_for(lambda: [e for e in _events(events) if e["type"] == "paused"], proc, "the pause")[0]
        assert stop["step"] == 1 and Path(stop["state"]).is_dir()  # a state, should the process die while paused
        tests = paused / "test_lora.tests"
        tests.mkdir()
        RenderRequest(["lsdemo shape, red disc"], seeds=[3], strengths=[0.0, 1.0], steps=2, width=64, height=64,
                    sampler="euler_a").write(tests / "first.json")
        done = _wait_for(lambda: (tests / "first.done.json").is_file() and
                         json.loads((tests / "first.done.json").read_text()), proc, "the test images")
        assert done["error"] is None and [i["strength"] for i in done["images"]] == [0.0, 1.0]
        pictures = [np.asarray(Image.open(i["path"])) for i in done["images"]]
        assert pictures[0].shape == (64, 64, 3) and not np.array_equal(pictures[0], pictures[1])
        assert any(e["type"] == "test" and e["id"] == "first" for e in _events(events))
        (paused / "test_lora.pause").unlink()  # resume
        proc.wait(timeout=300)
        assert proc.returncode == 0, (tmp_path / "paused.log").read_text()
        assert reference.wait(timeout=300) == 0, (tmp_path / "straight.log").read_text()
    finally:
        for p in (proc, reference):
            if p.poll() is None:
                p.kill()
    kinds = [e["type"] for e in _events(events)]
    assert kinds.index("paused") < kinds.index("test") < kinds.index("resumed") < kinds.index("end")
    a, b = load_file(str(straight / "test_lora.safetensors")), load_file(str(paused / "test_lora.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # as if it never paused
