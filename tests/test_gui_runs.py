"""The GUI's run manager with the real engine: re-attach after a GUI restart, graceful stop, kill, failures."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from lora_studio.config import load_config
from lora_studio.jobs.runs import RunManager

from conftest import run_cli
from gui_helpers import finished_copy_of, tick


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


# ---------------------------------------------------------------- comparison jobs
def test_a_completed_run_queues_its_comparison_grid_and_the_runs_view_shows_it(trained_run, tmp_path):
    from lora_studio.compare import compare_argv, events_path, index_path, read_index
    from lora_studio.gui.app import Workbench
    from lora_studio.gui.tester import TestSettings
    from lora_studio.gui.views import history_rows

    out, config = finished_copy_of(trained_run, tmp_path, "lsdemo shape, red disc --w 64 --h 64 --d 3 --s 2 --l 5\n")
    manager = RunManager(tmp_path / "state", poll_seconds=0.2)
    run = manager.get("20250101-000000-abcdef")
    job = wait_for(lambda: manager.compare_job(run.id), timeout=30, what="the queued grid")
    assert run.status == "completed" and run.kind == "train"
    assert job.kind == "compare" and job.parent == run.id and job.argv == compare_argv(str(config))
    assert job.events == str(events_path(out / "compare", "test_lora"))
    assert job.output == str(index_path(out / "compare", "test_lora"))
    assert Path(job.log).parent == manager.root / job.id
    assert manager.pause().startswith("A comparison job is running")
    wait_for(lambda: job.status not in ("queued", "running"), timeout=300, what="the grid")
    assert job.status == "completed", Path(job.log).read_text(errors="replace")[-3000:]
    state = manager.live(job)
    assert state.total_steps == state.step == 1 + 2 * 4 and len(state.grids) == 1 and len(state.images) == 9
    assert "1 grid(s), 9 image(s)" in job.message
    assert read_index(job.output)["status"] == "completed"
    assert [row[1] for row in history_rows(manager.history())] == ["comparison grid", "training"]

    w = Workbench(tmp_path / "state", manager=manager)
    view = tick(w)
    assert "Comparison grid" in view["compare"] and "rows are the saved files" in view["compare"]
    assert view["grid"].count("<img ") == 1 and "lsdemo shape" in view["grid"]
    files = view["files"]["choices"]
    assert [Path(path).name for _, path in files] == ["test_lora-000001.safetensors", "test_lora.safetensors"]
    assert view["files"]["value"].endswith("test_lora.safetensors")
    assert [value for _, value in view["choices"]["choices"]] == ["latest", run.id]
    # Test this file: the file, its run's base model and sample settings go to the Test tab, which is shown
    *values, tabs, message = w.test.test_this_file(files[0][1], run.id, *TestSettings().values())
    shown = TestSettings.from_values(values)
    assert shown.files == files[0][1] and shown.model == str(trained_run["model"]) and tabs.selected == "test"
    assert shown.prompts == "lsdemo shape, red disc --w 64 --h 64 --d 3 --s 2 --l 5" and shown.width == 64
    # a restarted GUI keeps the kinds and the link
    manager.close()
    again = RunManager(tmp_path / "state", poll_seconds=0.2)
    assert again.compare_job(run.id).id == job.id and again.get(job.id).kind == "compare"
    again.close()


def test_the_test_tab_renders_chosen_files_as_a_job_in_the_queue(trained_run, tmp_path):
    from lora_studio.gui.app import Workbench
    from lora_studio.gui.tester import TestSettings, load_remembered

    w = Workbench(tmp_path / "state")
    settings = TestSettings(model=str(trained_run["model"]), files=str(trained_run["file"]),
                            prompts="lsdemo shape, red disc --s 2", seeds="1, 2", strengths="0, 1", steps=3,
                            width=64, height=64, cfg_scale=5.0)
    message, job = w.test.render(*settings.values(), {})
    assert job["kind"] == "compare", message
    rec = w.manager.get(job["id"])
    assert rec.kind == "compare" and rec.parent is None and rec.output_name == "test_lora"
    assert "--files" in rec.argv and str(trained_run["file"]) in rec.argv and "--seeds" in rec.argv
    prompts = (w.manager.root / rec.id / "prompts.txt").read_text(encoding="utf-8")
    assert prompts == "lsdemo shape, red disc --s 2 --w 64 --h 64 --l 5\n"  # the prompt's own steps win
    assert load_remembered(tmp_path / "state") == (settings, job)
    wait_for(lambda: rec.status not in ("queued", "running"), timeout=300, what="the test images")
    assert rec.status == "completed", Path(rec.log).read_text(errors="replace")[-3000:]
    view = tick(w, job=job)
    assert view["test_status"].startswith("Done: 2 grid(s), 4 image(s)")
    assert [caption for _, caption in view["test_gallery"]] == [
        "base model · strength 0 · seed 1", "test_lora · strength 1 · seed 1",
        "base model · strength 0 · seed 2", "test_lora · strength 1 · seed 2"]
    assert view["test_grids"].count("<img ") == 2
    assert "Test tab images" not in view["mini"] and "No run yet" in view["mini"]  # the LoRA tab's card: training
    w.manager.close()
