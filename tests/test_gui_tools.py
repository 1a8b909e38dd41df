"""The Tools tab: each LoRA tool's fields become its command line, and the tool runs as a job in the queue with its
progress, report and errors shown (the real engine process, on the tiny SD1 model's LoRA)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import gradio as gr
import pytest
from safetensors import safe_open

from lora_studio.errors import UserError
from lora_studio.jobs.runs import RunManager
from lora_studio.gui.tools_tab import BY_KEY, ToolsTab, tool_options
from lora_studio.training.events import read_events


def _values(key: str, **given) -> dict:
    return {f.name: given.get(f.name, f.default) for f in BY_KEY[key].fields}


def test_each_tools_fields_become_its_command_options(trained_run, tmp_path):
    lora, model = trained_run["file"], trained_run["model"]
    out = tmp_path / "small.safetensors"
    options, label = tool_options(BY_KEY["resize"], _values("resize", source=str(lora), out=str(out), new_rank="2",
                                                            dynamic_method="sv_fro", dynamic_param="0.9"))
    assert options == [str(lora), str(out), "--new_rank=2", "--dynamic_method=sv_fro", "--dynamic_param=0.9",
                       "--device=cpu", "--verbose"]
    assert label == "resize: test_lora"
    options, _ = tool_options(BY_KEY["bake"], _values("bake", model=str(model), lora=f"{lora}\n{lora}\n",
                                                      ratio="0.5, 1", out=str(out), save_precision="fp16"))
    assert options == [f"--model={model}", f"--lora={lora}", f"--lora={lora}", "--ratio=0.5", "--ratio=1",
                       f"--out={out}", "--save_precision=fp16"]
    options, _ = tool_options(BY_KEY["extract"], _values("extract", model=str(model), tuned=str(model), out=str(out),
                                                         v2=True))
    assert options[-2:] == ["--save_precision=float", "--v2"] and "--clamp_quantile=0.99" in options
    bad = [("resize", dict(source=str(tmp_path / "missing.safetensors"), out=str(out)), "LoRA file: .* not found"),
           ("resize", dict(source=str(lora), out=str(lora)), "also an input"),
           ("resize", dict(source=str(lora), out=str(tmp_path / "x.ckpt")), "must end in .safetensors"),
           ("resize", dict(source=str(lora), out=str(out), new_rank="2.5"), "New rank: give a whole number"),
           ("resize", dict(source=str(lora), out=str(out), dynamic_method="sv_fro"), "Dynamic parameter"),
           ("merge", dict(lora=str(lora), ratio="1, 2", out=str(out)), "one ratio per LoRA file \\(1 files, 2"),
           ("merge", dict(lora=str(lora), ratio="x", out=str(out)), "'x' is not a number"),
           ("merge", dict(lora=str(lora), out=str(out), mode="svd"), "svd merge needs"),
           ("bake", dict(lora=str(lora), out=str(out)), "Base model .*: required"),
           ("convert", dict(source=str(lora), out=str(out), model=str(model), to="onnx"), "To: choose one of")]
    for key, given, message in bad:
        with pytest.raises(UserError, match=message):
            tool_options(BY_KEY[key], _values(key, **given))
    with pytest.raises(UserError, match="outside the folders allowed"):
        tool_options(BY_KEY["inspect"], {"file": str(lora)}, roots=[tmp_path])


def _wait(manager: RunManager, run_id: str, timeout: float = 300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        rec = manager.get(run_id)
        if rec.status not in ("queued", "running", "stopping"):
            return rec
        time.sleep(0.2)
    raise AssertionError(f"{run_id} did not finish")


def test_tools_run_as_queued_jobs_with_progress_reports_and_errors(trained_run, tmp_path):
    manager = RunManager(tmp_path / "state", poll_seconds=0.2)
    tab = ToolsTab(manager, None)
    lora, out = trained_run["file"], tmp_path / "tools" / "rank2.safetensors"
    message, job = tab.run("resize", *_values("resize", source=str(lora), out=str(out), new_rank="2").values())
    assert job["id"] and message.startswith("Added to the queue as") and "Running" not in message
    message, job2 = tab.run("inspect", str(lora))
    assert "behind the current job" in message and manager.get(job2["id"]).status == "queued"
    message, job3 = tab.run("convert", *_values("convert", source=str(lora), out=str(tmp_path / "c.safetensors"),
                                                to="kohya", model=str(trained_run["model"])).values())
    message, bad = tab.run("resize", *_values("resize", source=str(lora), out=str(lora)).values())
    assert message.startswith("✗ New file:") and "also an input" in message and bad is not None

    rec = _wait(manager, job["id"])
    assert rec.status == "completed" and rec.message == f"wrote {out}", Path(rec.log).read_text()[-2000:]
    progress, status, report, marker = tab.tick(job, None)
    assert "resize: test_lora" in progress and "ls-completed" in progress and status.startswith("✓")
    assert "mean Frobenius share kept" in report and "rank 4 -> 2" in report  # verbose: a line per module
    assert tab.tick(job, marker) == (gr.skip(),) * 3 + (marker,)  # nothing changed: nothing is sent
    events = read_events(rec.events)
    phases = [(e["name"], e["total"]) for e in events if e["type"] == "phase"]
    modules = len(json.loads(Path(rec.output).read_text())["modules"])
    assert phases == [("resizing", modules), ("writing", 0)]
    assert [e["step"] for e in events if e["type"] == "step"] == list(range(1, modules + 1))
    with safe_open(str(out), "pt") as fh:
        history = json.loads(fh.metadata()["lora_studio_history"])
    assert history[-1]["tool"] == "resize" and history[-1]["parameters"]["new_rank"] == 2

    rec2 = _wait(manager, job2["id"])
    assert rec2.status == "completed" and rec2.started >= rec.ended - 1.5  # it waited for the resize
    text = tab.tick(job2, None)[2]
    assert "family: SD1.x" in text and "diffusers: yes" in text
    rec3 = _wait(manager, job3["id"])
    assert rec3.status == "failed" and "diffusers / peft LoRA weights" in rec3.message
    assert tab.tick(job3, None)[1].startswith("✗")
    assert not (tmp_path / "c.safetensors").exists()
    manager.close()
