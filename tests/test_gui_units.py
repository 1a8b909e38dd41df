"""The GUI's parts without a browser: schema -> widgets, form round trips, checks, presets, dataset preparation."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from lora_studio.config import build_config, load_config, save_config
from lora_studio.config import schema as S
from lora_studio.config.values import parse_value
from lora_studio.errors import ConfigError, UserError
from lora_studio.gui.dataset_prep import prepare_folders
from lora_studio.gui.form import check_form, form_values, values_to_raw
from lora_studio.gui.presets import PERSONAL, SHIPPED_DIR, list_presets, read_preset, save_user_preset
from lora_studio.gui.widgets import TABS, from_widget, to_widget, widget_spec, widget_specs

from conftest import REPO, run_cli
from gui_helpers import tick

KOHYA_LABELS = {"pretrained_model_name_or_path": "Pretrained model name or path", "train_data_dir": "Image folder",
                "output_dir": "Output directory", "output_name": "Trained Model output name",
                "network_dim": "Network Rank (Dimension)", "network_alpha": "Network Alpha",
                "train_batch_size": "Train batch size", "max_train_epochs": "Max train epoch",
                "learning_rate": "Learning rate"}


def test_every_setting_has_one_widget_with_its_schema_label_help_default_and_range():
    specs = widget_specs()
    assert [s.name for s in specs] == [s.name for s in S.SETTINGS]
    assert len({s.kwargs["elem_id"] for s in specs}) == len(specs)
    for spec, setting in zip(specs, S.SETTINGS):
        assert spec.kwargs["label"] == setting.label and spec.help == setting.help and spec.tab in TABS
        assert spec.kwargs["value"] == to_widget(setting, setting.default)
    by_name = {s.name: s for s in specs}
    for name, label in KOHYA_LABELS.items():
        assert by_name[name].kwargs["label"] == label
    assert {s.tab for s in specs} == set(TABS)  # every tab holds something


def test_widget_kinds_follow_the_setting_kinds():
    spec = widget_spec(S.BY_NAME["lr_scheduler"])
    assert spec.component == "dropdown" and spec.kwargs["choices"] == list(S.BY_NAME["lr_scheduler"].choices)
    assert spec.kwargs["allow_custom_value"] is False
    optimizer = widget_spec(S.BY_NAME["optimizer_type"])
    assert optimizer.component == "dropdown" and optimizer.kwargs["allow_custom_value"] is True
    assert "AdamW8bit" in optimizer.kwargs["choices"]
    dim = widget_spec(S.BY_NAME["network_dim"])
    assert dim.component == "number" and dim.kwargs["precision"] == 0 and dim.kwargs["value"] == 4
    assert dim.kwargs["info"] == "Rank of each adapter: capacity and file size. (1 to 100000 · default 4)"
    assert widget_spec(S.BY_NAME["learning_rate"]).kwargs["precision"] is None
    seed = widget_spec(S.BY_NAME["seed"])  # optional numbers are text: a number box would show an empty value as 0
    assert seed.component == "textbox" and seed.kwargs["value"] == "" and "optional" in seed.kwargs["info"]
    assert to_widget(S.BY_NAME["unet_lr"], 5e-05) == "5e-05" and from_widget(S.BY_NAME["unet_lr"], " ") is None
    assert widget_spec(S.BY_NAME["cache_latents"]).component == "checkbox"
    assert widget_spec(S.BY_NAME["train_data_dir"]).component == "textbox"
    assert widget_spec(S.BY_NAME["network_dim"]).tab == "basic"
    assert widget_spec(S.BY_NAME["gradient_checkpointing"]).tab == "advanced"
    assert widget_spec(S.BY_NAME["sample_sampler"]).tab == "samples"
    token = widget_spec(S.BY_NAME["huggingface_token"])  # a secret is typed, not shown
    assert token.component == "textbox" and token.kwargs["type"] == "password" and token.tab == "advanced"
    assert "type" not in widget_spec(S.BY_NAME["huggingface_repo_id"]).kwargs
    assert widget_spec(S.BY_NAME["pretrained_model_name_or_path"]).tab == "model"
    assert widget_spec(S.BY_NAME["output_dir"]).tab == "folders"


def _non_default(setting: S.Setting):
    """A value other than the default that the schema accepts: zero where the range allows it."""
    if setting.choices:
        return next(c for c in setting.choices if c != setting.default) if len(setting.choices) > 1 else \
            setting.choices[0]
    zero_allowed = (setting.minimum or 0) <= 0
    return {S.BOOL: not setting.default,
            S.INT: 0 if zero_allowed and setting.default != 0 else int(setting.minimum or 0) + 2,
            S.FLOAT: 0.0 if zero_allowed and setting.default != 0.0 else 0.25,
            S.PATH: "/data/some folder/é.png", S.STR: "name with spaces", S.RESOLUTION: "512,768",
            S.STR_LIST: ["weight_decay=0.01", "betas=(0.9, 0.99)"], S.FLOAT_OR_LIST: [0.0001, 5e-05],
            S.INT_OR_RATIO: 0.05}[setting.kind]


def test_each_changed_setting_survives_widget_save_and_load_zero_included(tmp_path):
    values = {s.name: _non_default(s) for s in S.SETTINGS}
    values["network_train_text_encoder_only"] = False  # cannot both be true
    widget_values = form_values(values)
    raw = values_to_raw(widget_values)
    for name, value in values.items():
        assert parse_value(S.BY_NAME[name], raw.get(name)) == value, name
    cfg = build_config(raw)
    path = save_config(cfg, tmp_path / "all.toml")
    loaded = load_config(path)
    for secret in S.SECRET_SETTINGS:  # a key or token is never written to a config file
        assert secret not in path.read_text("utf-8") and getattr(loaded, secret) is None
    loaded = build_config({**loaded.explicit(), **{k: getattr(cfg, k) for k in S.SECRET_SETTINGS}})
    assert loaded.as_dict() == cfg.as_dict()
    assert form_values(loaded.as_dict()) == widget_values
    assert loaded.max_grad_norm == 0.0 and loaded.prior_loss_weight == 0.0 and loaded.network_alpha == 0.0


def test_empty_fields_mean_the_default_and_numbers_keep_their_type():
    assert from_widget(S.BY_NAME["seed"], None) is None
    assert from_widget(S.BY_NAME["network_dim"], 8.0) == 8
    assert from_widget(S.BY_NAME["vae"], "  ") is None
    assert from_widget(S.BY_NAME["caption_extension"], "") == ""  # sd-scripts allows an empty extension


def _demo_values(root: Path, model: Path) -> dict:
    from lora_studio.demo import demo_settings, write_dataset

    write_dataset(root, count=8, repeats=10)
    settings = demo_settings(root, model)
    settings.pop("sample_prompts")
    return form_values(build_config(settings).as_dict())


def test_check_form_reports_each_problem_at_its_field(tmp_path, tiny_models):
    values = _demo_values(tmp_path, tiny_models["single"])
    values.update(learning_rate=-1, output_name="a/b", train_data_dir=str(tmp_path / "nope"), network_dim=None)
    check = check_form(values)
    assert not check.ok
    assert check.problems["learning_rate"] == "must be between 0 and 10, got -1"
    assert "plain file name" in check.problems["output_name"]
    assert "folder not found" in check.problems["train_data_dir"]  # every problem at once, not one by one
    assert check.report().startswith("**Fix 3 setting(s) before starting:**")
    check = check_form({**values, "learning_rate": 0.001, "output_name": "ok"})
    assert set(check.problems) == {"train_data_dir"} and "folder not found" in check.problems["train_data_dir"]


def test_check_form_counts_the_steps_the_engine_takes(tmp_path, trained_run):
    import json

    cfg = load_config(trained_run["config"])
    check = check_form(form_values(cfg.as_dict()))
    assert check.ok, check.problems
    events = [json.loads(line) for line in (trained_run["out"] / "test_lora_events.jsonl").read_text().splitlines()]
    start = next(e for e in events if e["type"] == "start")
    assert (check.plan.total_steps, check.plan.total_epochs, check.plan.steps_per_epoch) == \
        (start["total_steps"], start["total_epochs"], start["steps_per_epoch"])
    check = check_form({**form_values(cfg.as_dict()), "gradient_accumulation_steps": 4, "num_processes": 2,
                        "max_train_epochs": 3})
    assert check.plan.steps_per_epoch == -(-(-(-check.plan.batches_per_epoch // 2)) // 4)
    assert check.plan.total_steps == 3 * check.plan.steps_per_epoch


def test_the_gui_never_imports_torch(tmp_path):
    code = ("import sys\n"
            "from pathlib import Path\n"
            "from lora_studio.cli import build_parser\n"
            "build_parser()  # what `lora-studio gui` runs first\n"
            "from lora_studio.gui.app import Workbench\n"
            "from lora_studio.gui.form import check_form\n"
            f"w = Workbench(Path({str(tmp_path / 'state')!r}))\n"
            "w.build()\n"
            f"check_form({{'train_data_dir': {str(tmp_path / 'data' / 'img')!r}, 'output_dir': '/tmp/x'}})\n"
            "w.manager.close()\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n"
            "print('no torch')\n")
    from lora_studio.demo import write_dataset

    write_dataset(tmp_path / "data", count=2)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "no torch" in proc.stdout


def test_the_job_service_imports_no_gradio_and_nothing_of_the_gui():
    code = ("import sys, lora_studio.jobs.command, lora_studio.jobs.live, lora_studio.jobs.runs\n"
            "print(sorted(m for m in sys.modules if m == 'gradio' or m.startswith(('gradio.', 'lora_studio.gui'))))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert proc.stdout.strip() == "[]"


def test_shipped_presets_are_documented_and_hold_no_paths():
    presets = list_presets(None)
    for key in ("sd15_character_8gb", "sd15_style", "sdxl_character_12gb", "sdxl_low_vram_8gb"):
        preset = presets[key]
        assert len(preset.description) > 60 and preset.settings, key
        assert not set(preset.settings) & PERSONAL
    assert presets["sdxl_character_12gb"].settings["resolution"] == "1024"
    assert presets["sd15_character_8gb"].settings["network_dim"] == 16
    assert (SHIPPED_DIR / "README.md").is_file()


def test_user_presets_save_list_and_refuse_paths(tmp_path):
    values = build_config({"network_dim": 32, "output_dir": "/out", "learning_rate": 2e-4, "noise_offset": 0.0,
                           "huggingface_token": "hf_secret", "wandb_api_key": "secret"}).as_dict()
    path = save_user_preset(tmp_path, "My style: v2", values, "for my style")
    preset = list_presets(tmp_path)["user: " + path.stem]
    assert preset.settings == {"network_dim": 32, "learning_rate": 2e-4}
    bad = tmp_path / "bad.toml"
    bad.write_text('[preset]\ntitle = "x"\n[folders]\noutput_dir = "/x"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="output_dir"):
        read_preset(bad)
    assert "cannot be used" in list_presets(tmp_path)["user: bad"].description


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_dataset_preparation_copies_into_the_kohya_layout(tmp_path, tiny_models):
    from lora_studio.demo import write_dataset

    source = write_dataset(tmp_path / "mine", count=5) / "10_lsdemo shape"
    (source / "003.txt").unlink()
    reg = write_dataset(tmp_path / "reg", count=3) / "10_lsdemo shape"
    before = _digest(source)
    result = prepare_folders(tmp_path / "train", "emi", "person", source, 20, reg, 1)
    assert _digest(source) == before  # originals untouched
    img = tmp_path / "train" / "img" / "20_emi person"
    assert _digest(img) == before
    assert sorted(p.name for p in (tmp_path / "train" / "reg" / "1_person").iterdir()) == sorted(
        p.name for p in reg.iterdir())
    assert (tmp_path / "train" / "model").is_dir() and (tmp_path / "train" / "log").is_dir()
    assert result.settings()["train_data_dir"] == str(tmp_path / "train" / "img")
    assert "1 of 5 training image(s) have no caption" in result.report()
    again = prepare_folders(tmp_path / "train", "emi", "person", source, 20)  # same files again: kept, not copied
    assert again.copied == 0 and again.kept == 9
    (source / "000.txt").write_text("changed", encoding="utf-8")
    with pytest.raises(UserError, match="already exists and differs"):
        prepare_folders(tmp_path / "train", "emi", "person", source, 20)
    assert (img / "000.txt").read_text(encoding="utf-8") != "changed"

    values = form_values(build_config({**result.settings(), "train_batch_size": 2,
                                       "pretrained_model_name_or_path": str(tiny_models["single"])}).as_dict())
    check = check_form(values)
    assert check.ok, check.problems
    summary = check.data.summary()
    assert "8 images (100 training with repeats, 3 regularisation)" in summary
    assert "1 image(s) without a caption" in summary and "bucket 512x512: 8 image(s)" in summary
    assert check.plan.batches_per_epoch == 100  # (100 training + 100 balanced regularisation samples) / batch 2


@pytest.mark.parametrize("bad, message", [("", "Instance prompt is empty"), ("a/b", "must not contain")])
def test_dataset_preparation_refuses_bad_input(tmp_path, bad, message):
    from lora_studio.demo import write_dataset

    source = write_dataset(tmp_path / "mine", count=1) / "10_lsdemo shape"
    with pytest.raises(UserError, match=message):
        prepare_folders(tmp_path / "train", bad, "person", source, 5)
    with pytest.raises(UserError, match="inside the training images folder"):
        prepare_folders(source / "sub", "emi", "", source, 5)


def test_gui_refuses_a_network_address_without_a_password():
    proc = run_cli("gui", "--host", "0.0.0.0", "--no-browser", check=False, timeout=60, subprocess_=True)
    assert proc.returncode == 2
    assert "--username and --password" in proc.stderr and "Traceback" not in proc.stderr


def test_gui_sh_sets_up_on_first_use_then_opens_the_gui_with_its_arguments(tmp_path):
    """gui.sh run for real beside stand-ins for setup.sh and the installed command: the first start sets up, the
    next does not, and both hand their arguments to ``lora-studio gui``."""
    import shutil
    import stat

    shutil.copy(REPO / "gui.sh", tmp_path / "gui.sh")
    record = tmp_path / "record.txt"
    (tmp_path / "setup.sh").write_text(
        "#!/usr/bin/env bash\necho setup >> record.txt\nmkdir -p .venv/bin\n"
        "printf '#!/usr/bin/env bash\\necho \"lora-studio $*\" >> record.txt\\n' > .venv/bin/lora-studio\n"
        "chmod +x .venv/bin/lora-studio\n", encoding="utf-8")
    for script in ("gui.sh", "setup.sh"):
        (tmp_path / script).chmod((tmp_path / script).stat().st_mode | stat.S_IXUSR)
    for _ in range(2):
        subprocess.run(["bash", str(tmp_path / "gui.sh"), "--port", "7861", "--no-browser"], cwd="/", check=True,
                       timeout=30)
    assert record.read_text(encoding="utf-8").splitlines() == [
        "setup", "lora-studio gui --port 7861 --no-browser", "lora-studio gui --port 7861 --no-browser"]


def test_gui_bat_sets_up_on_first_use_then_opens_the_gui_with_its_arguments():
    lines = [line.strip() for line in (REPO / "gui.bat").read_text(encoding="utf-8").splitlines()]
    check = lines.index('if not exist ".venv\\Scripts\\lora-studio.exe" (')
    assert lines[check + 1].startswith("call setup.bat") and lines[check + 2] == ")"
    assert lines[check + 3] == '".venv\\Scripts\\lora-studio.exe" gui %*'  # the arguments passed on, last
    assert lines[-1] == lines[check + 3]


def test_paths_and_names_with_line_breaks_are_refused(tmp_path):
    check = check_form({"output_dir": "/tmp/a\nb", "output_name": "x\ny", "pretrained_model_name_or_path": "m\x00"})
    assert "one line" in check.problems["output_dir"] and "one line" in check.problems["pretrained_model_name_or_path"]
    assert "plain file name" in check.problems["output_name"]


# ---------------------------------------------------------------- the Test tab

def test_the_test_tab_knows_the_engines_samplers_and_reads_prompt_options_as_it_does():
    from lora_studio.gui.tester import SAMPLERS, split_prompt
    from lora_studio.training.sampling import SAMPLERS as ENGINE_SAMPLERS, parse_prompt_line

    assert SAMPLERS == list(ENGINE_SAMPLERS)
    line = "a red disc, --x ignored --n blurry, dark --w 96 --h 128 --d 5 --s 12 --l 6.5 --ss euler"
    text, options = split_prompt(line)
    parsed = parse_prompt_line(line, 512)
    assert text == parsed.prompt and options["n"] == parsed.negative
    assert (int(options["w"]), int(options["h"]), int(options["d"]), int(options["s"]), float(options["l"]),
            options["ss"]) == (parsed.width, parsed.height, parsed.seed, parsed.steps, parsed.cfg_scale,
                               parsed.sampler)


def test_test_tab_settings_are_remembered_and_checked(tmp_path):
    from lora_studio.gui.app import Workbench
    from lora_studio.gui.tester import TestSettings, load_remembered

    lora = tmp_path / "mine.safetensors"
    lora.write_bytes(b"x")
    typed = TestSettings(model=str(tmp_path / "no-such-model"), files=str(lora), prompts="a cat --w 64\n# a note\n",
                         negative="blurry", seeds="3, 4", strengths="0 1", sampler="dpmsolver++", steps=9, width=64,
                         height=96, cfg_scale=5.5)
    w = Workbench(tmp_path / "state")
    message, job = w.test.render(*typed.values(), {})
    assert message.startswith("✗ Base model not found") and job == gr_skip()
    assert w.manager.ordered() == []  # nothing queued
    w.manager.close()

    again = Workbench(tmp_path / "state")  # a new page (or GUI) starts from what was typed last
    assert load_remembered(tmp_path / "state")[0] == typed
    assert again.test.test_defaults()[:len(typed.values())] == typed.values()
    again.manager.close()
    for change, problem in [({"prompts": "# only a comment"}, "at least one prompt"),
                            ({"strengths": "0, x"}, "'x' is not a number"), ({"seeds": "1.5"}, "whole number"),
                            ({"files": ""}, "at least one LoRA file"), ({"sampler": "nope"}, "Unknown sampler")]:
        settings = TestSettings(**{**typed.__dict__, "model": str(lora), **change})
        w = Workbench(tmp_path / "state2")
        assert problem in w.test.render(*settings.values(), {})[0]
        w.manager.close()


def gr_skip():
    import gradio as gr

    return gr.skip()


def _fake_paused_run(tmp_path):
    """A training run the manager believes is running (this test's own process) and paused at step 3."""
    import json
    import os
    import time

    import psutil

    out = tmp_path / "out"
    out.mkdir()
    cfg = build_config({"output_dir": str(out), "output_name": "paused_lora", "pretrained_model_name_or_path": "m"})
    folder = tmp_path / "state" / "runs" / "20250101-000000-abcdef"
    folder.mkdir(parents=True)
    config = save_config(cfg, folder / "config.toml")
    events = out / "paused_lora_events.jsonl"
    events.write_text("\n".join(json.dumps(e) for e in [
        {"type": "start", "total_steps": 10, "total_epochs": 1, "time": time.time()},
        {"type": "step", "step": 3, "epoch": 1, "loss": 0.5, "time": time.time()},
        {"type": "paused", "step": 3, "epoch": 1}]) + "\n", encoding="utf-8")
    record = {"id": folder.name, "output_name": "paused_lora", "output_dir": str(out), "config": str(config),
              "status": "running", "started": time.time(), "pid": os.getpid(),
              "pid_started": psutil.Process().create_time(), "events": str(events), "log": str(folder / "engine.log")}
    (folder / "run.json").write_text(json.dumps(record), encoding="utf-8")  # as older versions wrote it: no kind
    return out


def test_render_while_a_run_is_paused_asks_that_run_and_shows_its_answer(tmp_path):
    import json

    from PIL import Image

    from lora_studio.gui.app import Workbench
    from lora_studio.gui.tester import TestSettings
    from lora_studio.training.pause import RenderRequest, pending_tests

    out = _fake_paused_run(tmp_path)
    from lora_studio.jobs.runs import RunManager

    manager = RunManager(tmp_path / "state", poll_seconds=3600)  # never polls: the fake run stays "running"
    w = Workbench(tmp_path / "state", manager=manager)
    active = manager.active()
    assert active is not None and active.kind == "train" and manager.live(active).paused
    settings = TestSettings(prompts="a red disc --w 128 --s 4\nanother --n ugly", negative="blurry", seeds="7",
                            strengths="0, 1", sampler="euler", steps=6, width=64, height=72, cfg_scale=5.0)
    message, job = w.test.render(*settings.values(), {})
    assert "paused run **paused_lora** (step 3)" in message, message
    assert job["kind"] == "paused" and manager.queued() == [] and len(job["requests"]) == 2
    requests = pending_tests(out / "paused_lora.tests")
    assert [str(p) for p in requests] == job["requests"]
    first, second = (RenderRequest.read(p) for p in requests)  # what the engine reads
    assert (first.prompts, first.negative, first.width, first.height, first.steps, first.seeds, first.strengths,
            first.sampler, first.cfg_scale) == (["a red disc"], "blurry", 128, 72, 4, [7], [0.0, 1.0], "euler", 5.0)
    assert (second.prompts, second.negative, second.width, second.steps) == (["another"], "ugly", 64, 6)

    view = tick(w, job=job)
    assert "0 of 2 prompt(s) done" in view["test_status"] and view["test_gallery"] == []
    # the engine's answers
    for k, request in enumerate(requests):
        image = out / f"answer{k}.png"
        Image.new("RGB", (8, 8), "red").save(image)
        done = request.with_name(request.stem + ".done.json")
        done.write_text(json.dumps({"images": [{"path": str(image), "prompt": "p", "seed": 7, "strength": 1.0}],
                                    "error": None}), encoding="utf-8")
    view = tick(w, job=job)
    assert "Done: 2 image(s)" in view["test_status"]
    assert [caption for _, caption in view["test_gallery"]] == ["paused_lora at step 3 · strength 1 · seed 7"] * 2
    assert "Paused" in view["progress"]
    manager.close()
