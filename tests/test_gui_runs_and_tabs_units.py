"""Without a browser: the buttons and the live view follow the run state, click-to-remove in the queue, the Browse
picker's confinement, the typed sample prompts, and what the Dataset and Tools tabs take from the form."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest

from gui_helpers import tick
from lora_studio.gui.app import Workbench
from lora_studio.gui.browse import PathPicker
from lora_studio.gui.carry import FORM_KEYS
from lora_studio.gui.dataset_tab import DatasetTab
from lora_studio.gui.runs_tab import IDLE_TICK, LIVE_TICK
from lora_studio.gui.sample_prompts import SamplePrompts
from lora_studio.gui.tools_tab import ToolsTab
from lora_studio.jobs.runs import RunManager, RunRecord


@pytest.fixture
def bench(tmp_path):
    manager = RunManager(tmp_path / "state", poll_seconds=3600)  # records put in by hand: nothing is launched
    yield Workbench(tmp_path / "state", manager=manager)
    manager.close()


def _record(bench, name: str, status: str, kind: str = "train") -> RunRecord:
    rec = RunRecord(id=f"{time.time_ns()}-{name}", output_name=name, output_dir="/tmp/out", config="", kind=kind,
                    status=status, started=None if status == "queued" else time.time(), log="/nonexistent.log")
    bench.manager.records[rec.id] = rec
    return rec


def _value(update, key: str):
    return update.get(key) if isinstance(update, dict) else getattr(update, key)


def test_buttons_and_the_live_view_follow_the_run_state(bench):
    idle = tick(bench)
    for key in ("stop", "stop2", "pause"):
        assert idle[key]["interactive"] is False
    assert idle["stop"]["variant"] == "secondary" and idle["resume"]["visible"] is False
    assert _value(idle["timer"], "value") == IDLE_TICK

    stopped = _record(bench, "stopped_one", "stopped")
    assert tick(bench)["resume"]["visible"] is True  # a stopped run can be resumed
    assert bench.manager.resumable() is stopped
    _record(bench, "done_one", "completed")
    assert tick(bench)["resume"]["visible"] is False  # not after a run that completed
    assert bench.manager.resume_last() == "There is no stopped or failed run to resume."

    _record(bench, "training", "running")
    waiting = _record(bench, "waiting", "queued")
    live = tick(bench)
    assert live["stop"]["interactive"] is True and live["stop"]["variant"] == "stop"
    assert live["pause"]["interactive"] is True and live["resume"]["visible"] is False
    assert _value(live["timer"], "value") == LIVE_TICK
    assert live["remove"]["choices"] == [(f"waiting · training ({waiting.id})", waiting.id)]

    # a click on the queued row chooses it; Remove takes it out
    event = SimpleNamespace(index=[0, 2], row_value=[waiting.id, "training", "waiting", "/tmp/out", ""])
    assert bench.runs.pick_queued(event)["value"] == waiting.id
    message, choice = bench.runs.remove_queued(waiting.id)
    assert message == f"Removed waiting ({waiting.id}) from the queue." and choice["value"] is None
    assert waiting.status == "cancelled" and bench.manager.queued() == []
    assert bench.runs.remove_queued(waiting.id)[0] == "waiting is no longer in the queue."


def test_the_picker_lists_only_inside_the_allowed_folders(tmp_path):
    root, outside = tmp_path / "allowed", tmp_path / "outside"
    (root / "models").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.safetensors").write_bytes(b"x")
    (root / "models" / "a.safetensors").write_bytes(b"x" * 3000)
    (root / ".hidden").write_text("x")
    (root / "leads-outside").symlink_to(outside, target_is_directory=True)
    (root / "file-outside.safetensors").symlink_to(outside / "secret.safetensors")
    picker = PathPicker([root])

    listing = picker.listing(str(root))
    assert listing.rows == [["models/", "folder"]]  # no hidden file, no link that leads outside
    assert picker.listing(str(root / "models")).rows == [["a.safetensors", "2.9 KB"]]
    with pytest.raises(PermissionError):
        picker.listing(str(outside))
    with pytest.raises(PermissionError):
        picker.listing(str(root / "leads-outside"))
    assert picker.parent(str(root)) is None and picker.parent(str(root / "models")) == str(root)
    # the places: the field's folder and the form's, only when allowed
    places = picker.places(str(root / "models" / "a.safetensors"), [("Model", str(outside / "secret.safetensors")),
                                                                  ("Image folder", str(root))])
    assert [p for _, p in places] == [str(root / "models"), str(root)]
    unconfined = [p for _, p in PathPicker(None).base_places()]
    assert unconfined == [str(Path.home()), str(Path(Path.home().anchor))]


def test_a_pick_fills_its_field_by_kind(tmp_path):
    picker = PathPicker(None)
    with gr.Blocks():
        boxes = [gr.Textbox(elem_id=f"box-{i}") for i in range(3)]
        for box, kind in zip(boxes, ("path", "lines", "out")):
            picker.attach(box, kind)
    chosen = str(tmp_path / "b.safetensors")
    assert picker._fill({"target": 0, "value": ""}, chosen, False)[:3] == [chosen, gr.skip(), gr.skip()]
    lines = picker._fill({"target": 1, "value": "/x/a.safetensors\n"}, chosen, False)[1]
    assert lines == f"/x/a.safetensors\n{chosen}"
    out = picker._fill({"target": 2, "value": "/old/new_rank2.safetensors"}, str(tmp_path), True)[2]
    assert out == str(tmp_path / "new_rank2.safetensors")


def test_typed_sample_prompts_become_a_file_and_a_chosen_file_shows_its_prompts(tmp_path):
    prompts = SamplePrompts(tmp_path / "state", [tmp_path])
    written = tmp_path / "state" / "prompts" / "emi v1.txt"
    assert prompts.typed("a cat --w 64\n\nemi, smiling\n", "emi v1", "") == str(written)
    assert written.read_text(encoding="utf-8") == "a cat --w 64\nemi, smiling\n"
    assert prompts.typed("a cat --w 64\nemi, smiling", "emi v1", str(written)) == gr.skip()  # the same file
    theirs = tmp_path / "theirs.txt"
    theirs.write_text("a dog\n", encoding="utf-8")
    assert prompts.chosen(str(theirs), "") == "a dog"
    assert prompts.typed("a dog", "emi v1", str(theirs)) == gr.skip()  # shown, not typed: their file stays named
    assert prompts.chosen(str(written), "a cat") == gr.skip()  # the box's own file: the box stays as typed
    assert prompts.chosen("/etc/hostname", "") == gr.skip()  # outside the allowed folders: not read
    assert prompts.typed("", "emi v1", str(written)) == ""  # an emptied box: no sample prompts


def test_dataset_and_tools_tabs_take_the_forms_folder_settings_and_the_latest_file(tmp_path):
    from lora_studio.demo import write_dataset

    img = write_dataset(tmp_path / "data", count=3)
    manager = RunManager(tmp_path / "state", poll_seconds=3600)
    try:
        tab = DatasetTab(manager, [tmp_path])
        with gr.Blocks():
            tab.build()
        form = {"train_data_dir": str(img), "resolution": "64", "caption_extension": ".txt", "train_batch_size": 2,
                "max_token_length": 150}
        values = [form.get(k) for k in FORM_KEYS]
        editor_folder, editor_ext, health_folder, resolution, extension, tokens, settings, *tools = tab.opened(
            *values, "", ".txt", "", "512", ".txt", 75, {}, *[""] * len(tab.caption_tools.carried))
        assert (editor_folder, health_folder, resolution, tokens) == (str(img), str(img), "64", 150)
        assert tools[0] == str(img / "10_lsdemo shape")  # the tagger's folder: the only N_name subfolder
        report = tab.health(health_folder, resolution, "", extension, tokens, settings)
        assert "resolution 64x64, batch size 2, buckets off" in report
        assert tab.health(str(img), "sixty", "", ".txt", 75, settings).startswith("✗ Resolution")
        # the caption editor on the training folder: its subfolders' images, labelled
        gallery, _, _, where, _ = tab.show(str(img), ".txt", 1, "")
        assert where.startswith("3 image(s) in 1 subfolder(s) (10_lsdemo shape: 3)")
        assert gallery[0][1].startswith("10_lsdemo shape: ")
        (tmp_path / "plain" / "cats").mkdir(parents=True)
        assert "only subfolders: pick one (cats)" in tab.show(str(tmp_path / "plain"), ".txt", 1, "")[3]

        tools = ToolsTab(manager, None)
        with gr.Blocks():
            tools.build()
        names = [f"{f.kind}:{f.name}" for f, _ in tools.carried]
        filled = tools.opened("/models/base.safetensors", str(img), *[""] * len(names))
        assert filled[names.index("model:model")] == "/models/base.safetensors"
        assert all(v == gr.skip() for v in filled if v != "/models/base.safetensors")  # no run: no file offered
    finally:
        manager.close()
