"""The Test tab follows the run it tests (its resolution, sample prompts, sampler and steps as the engine reads them),
renders say which image they are at and the ETA, and grids are shown at their natural size. No browser, no torch."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
from PIL import Image
from safetensors.numpy import save_file

from lora_studio.config import build_config, load_config, save_config
from lora_studio.gui import views
from lora_studio.gui.tester import TestSettings, check, load_remembered, settings_from_run
from lora_studio.jobs.live import EventsFollower, LiveState
from lora_studio.jobs.runs import RunRecord
from lora_studio.training.prompts import read_prompt_file

PROMPTS = ("# one prompt a line\n"
           "a red disc --n blurry --w 64 --h 96 --d 3 --s 8 --l 5\n"
           "\n"
           "another shape --s 4 --ss ddim\n"
           "a third one\n")


def _run(tmp_path, **changes):
    """A run's config (as the GUI saved it when the run started), its prompt file and a saved LoRA file."""
    (tmp_path / "prompts.txt").write_text(PROMPTS, encoding="utf-8")
    lora = tmp_path / "out" / "my_lora-000001.safetensors"
    lora.parent.mkdir(parents=True)
    save_file({"x": np.zeros(1, np.float32)}, str(lora), metadata={"ss_seed": "77"})
    settings = {"pretrained_model_name_or_path": str(tmp_path / "base.safetensors"), "output_dir": str(lora.parent),
                "output_name": "my_lora", "train_data_dir": str(tmp_path / "img"), "resolution": "128,192",
                "sample_prompts": str(tmp_path / "prompts.txt"), "sample_sampler": "k_euler_a", "seed": 42}
    settings.update(changes)
    return save_config(build_config(settings).explicit(), tmp_path / "config.toml"), lora


def _engine_prompts(cfg, seed: int) -> list:
    """The run's sample prompts as its engine renders them: prompt i without --d at seed + i, without --l at the SD
    families' CFG 7.5."""
    prompts = read_prompt_file(cfg.sample_prompts, 128)
    return [dataclasses.replace(p, seed=seed + i if p.seed is None else p.seed,
                                cfg_scale=7.5 if p.cfg_scale is None else p.cfg_scale,
                                sampler=p.sampler or cfg.sample_sampler.removeprefix("k_")) for i, p in
            enumerate(prompts)]


def test_a_run_gives_the_test_tab_its_prompts_resolution_sampler_and_steps_as_its_engine_renders_them(tmp_path):
    from lora_studio.training.prompts import parse_prompt_line

    config, lora = _run(tmp_path)
    cfg = load_config(config)
    typed = TestSettings(prompts="what I typed", negative="ugly", seeds="5, 6", strengths="0, 1", sampler="heun",
                         steps=20, width=512, height=512, cfg_scale=3.0)
    settings, note = settings_from_run(cfg, str(lora), typed)
    assert settings.model == cfg.pretrained_model_name_or_path and settings.files == str(lora)
    assert settings.prompts.splitlines() == ["a red disc --n blurry --w 64 --h 96 --d 3 --s 8 --l 5",
                                             "another shape --s 4 --ss ddim --d 43", "a third one --d 44"]
    assert (settings.width, settings.height, settings.sampler, settings.steps, settings.cfg_scale) == \
        (128, 128, "euler_a", 30, 7.5)  # the training resolution's width, as the engine samples; sd-scripts' 30, 7.5
    assert (settings.negative, settings.seeds, settings.strengths) == ("", "", "0, 1")  # only the strengths stay
    assert note == "128 px, euler_a, 3 prompt(s) of `prompts.txt`"
    # what Render then draws is what the engine drew: every prompt with its own options, the rest the engine's
    plan = check(settings, need_files=False)
    rendered = [dataclasses.replace(parse_prompt_line(line, 512), sampler=parse_prompt_line(line, 512).sampler
                                    or plan.sampler) for line in plan.prompts]
    assert rendered == _engine_prompts(cfg, 42)
    assert plan.seeds == []  # each prompt's own seed


def test_a_run_without_a_seed_uses_the_one_it_drew_and_a_run_without_prompts_keeps_the_typed_ones(tmp_path):
    config, lora = _run(tmp_path, seed=None, resolution="64")
    cfg = load_config(config)
    settings, _ = settings_from_run(cfg, str(lora), TestSettings())
    assert settings.prompts.splitlines()[1:] == ["another shape --s 4 --ss ddim --d 78", "a third one --d 79"]
    assert (settings.width, settings.height) == (64, 64)
    settings, note = settings_from_run(cfg.replace(sample_prompts=None), str(lora), TestSettings(prompts="mine"))
    assert settings.prompts == "mine" and note == "64 px, euler_a, the run has no sample prompts: type one"
    settings, note = settings_from_run(cfg.replace(sample_prompts=str(tmp_path / "gone.txt")), str(lora),
                                       TestSettings(prompts="mine"))
    assert settings.prompts == "mine" and "could not be read" in note and "gone.txt" in note


class _OneRun:
    """The run manager as "Test this file" asks it: the run shown in the Runs view."""

    def __init__(self, rec: RunRecord):
        self.rec = rec

    def get(self, run_id):
        return self.rec if run_id == self.rec.id else None


def test_test_this_file_replaces_the_remembered_settings_with_the_runs(tmp_path):
    from lora_studio.gui.tester import remember
    from lora_studio.gui.tester_tab import TestTab

    config, lora = _run(tmp_path)
    state = tmp_path / "state"
    state.mkdir()
    remember(state, TestSettings(model="old.safetensors", prompts="old prompt", strengths="0, 0.5", width=512,
                                 height=512, steps=20))
    tab = TestTab(state, _OneRun(RunRecord("run1", "my_lora", str(lora.parent), str(config))), None)
    shown_now = load_remembered(state)[0]
    *values, tabs, message = tab.test_this_file(str(lora), "run1", *shown_now.values())
    shown = TestSettings.from_values(values)
    assert tabs.selected == "test" and shown.files == str(lora) and shown.strengths == "0, 0.5"
    assert (shown.width, shown.height, shown.steps, shown.sampler) == (128, 128, 30, "euler_a")
    assert shown.prompts.startswith("a red disc --n blurry") and shown.model.endswith("base.safetensors")
    assert message == ("my_lora-000001.safetensors is in the Test tab with its run's settings (128 px, euler_a, "
                       "3 prompt(s) of `prompts.txt`); press Render.")
    assert load_remembered(state)[0] == shown  # a reload shows the run's settings, not the older ones
    *values, _, message = tab.test_this_file("", "run1", *shown_now.values())
    assert message == "Choose one of the run's saved files first."


def test_a_render_says_which_image_it_is_at_and_the_eta_from_the_images_so_far(tmp_path):
    events = tmp_path / "events.jsonl"
    lines = ['{"type": "log", "level": "info", "message": "loading"}',
             '{"type": "start", "total_images": 6, "grids": 2, "time": 100.0}',
             '{"type": "image", "index": 1, "total": 6, "time": 104.0, "eta_s": 20.0}',
             '{"type": "image", "index": 2, "total": 6, "time": 107.0, "eta_s": 14.0}']
    events.write_text(lines[0] + "\n", encoding="utf-8")
    follower = EventsFollower(events)
    job = RunRecord("c1", "my_lora", str(tmp_path), "", status="running", started=99.0, kind="compare")
    state = follower.update()
    assert views.images_progress(state) == "loading the model …"
    assert "Loading the model" in views.progress_html(job, state) and "?" not in views.progress_html(job, state)
    events.write_text("\n".join(lines) + "\n", encoding="utf-8")
    state = follower.update()
    assert views.images_progress(state) == "image 2 of 6 · ETA 0:14"
    bar = views.progress_html(job, state)
    assert "Image 2 / 6" in bar and "ETA 0:14" in bar and "width:33.3%" in bar
    assert views.compare_markdown(job, state, None, RunRecord("r", "my_lora", "", "")) == \
        "**Comparison grid**: image 2 of 6 · ETA 0:14"
    done = LiveState(total_steps=6, step=6, eta_s=0.0)
    assert views.images_progress(done) == "image 6 of 6"


def test_grids_are_shown_at_their_natural_size_with_a_link_to_open_them(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    small, large = tmp_path / "small grid.png", tmp_path / "large.png"
    Image.new("RGB", (413, 160), "white").save(small)
    Image.new("RGB", (5216, 2100), "white").save(large)
    page = views.grids_html([(str(small), "a red disc & more · seed 1"), (str(large), "big · seed 2"),
                             (str(tmp_path / "gone.png"), "gone")], "Comparison grid")
    images = re.findall(r"<img src='([^']+)' width='(\d+)' height='(\d+)'", page)
    assert [(w, h) for _, w, h in images] == [("413", "160"), ("5216", "2100")]
    assert "max-width:100%;height:auto" in page and "a red disc &amp; more · seed 1 · 413x160 px" in page
    for url, _, _ in images:  # a copy the page's server may serve (its upload folder), the name URL-quoted
        assert url.startswith("gradio_api/file=" + str(tmp_path / "gradio")) and " " not in url
        assert f"<a href='{url}' target='_blank' rel='noopener'>open full size</a>" in page
    assert "gone" not in page and views.grids_html([], "Comparison grid") == ""
