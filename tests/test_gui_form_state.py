"""The LoRA tab's form as state, without a browser: what a load, a preset or a Kohya_ss import changes in the form
and what it leaves alone; the form saved as it is edited and restored; the printed command marked out of date."""

from __future__ import annotations

import json

import gradio as gr

from lora_studio.config.schema import SETTINGS
from lora_studio.gui.form_state import DEFAULTS, FORM_FILE, load_form, merge, save_form
from lora_studio.gui.lora_tab import COMMAND_LABEL, COMMAND_STALE, ConfigurationTab, LoraTab

from kohya_shapes import KOHYA_GUI_JSON


def _form(**values) -> tuple:
    """The form's widget values as the page sends them (SETTINGS order): the defaults with ``values``."""
    return tuple({**DEFAULTS, **values}[s.name] for s in SETTINGS)


def _shown(updates: list) -> dict:
    """The values a list of field updates sets, by name (a skipped or value-less update sets nothing)."""
    return {s.name: u["value"] for s, u in zip(SETTINGS, updates) if isinstance(u, dict) and "value" in u}


def test_a_kohya_json_from_another_computer_keeps_the_forms_model_and_folders_and_says_so(tmp_path):
    kohya = tmp_path / "emi.json"
    here = tmp_path / "logs"
    here.mkdir()
    kohya.write_text(json.dumps({**KOHYA_GUI_JSON, "logging_dir": str(here), "training_comment": ""}),
                     encoding="utf-8")
    mine = dict(pretrained_model_name_or_path="/home/me/sd15.safetensors", train_data_dir="/home/me/img",
                output_dir="/home/me/out", output_name="mine", training_comment="my notes", save_best=True)
    out = ConfigurationTab(tmp_path / "state", None).load_path(str(kohya), *_form(**mine))
    shown, check_report, report = _shown(out[:len(SETTINGS)]), out[-2], out[-1]
    # model, image and output folders (C:/... in the file), the output name and the comment: the form's stay
    assert not {"pretrained_model_name_or_path", "train_data_dir", "output_dir", "output_name", "training_comment",
                "save_best"} & set(shown)
    assert shown["logging_dir"] == str(here)  # a folder that is on this computer is taken
    assert (shown["network_dim"], shown["optimizer_type"]) == (16, "AdamW8bit")
    assert check_report == ""  # the old "Fix N setting(s)" went with the old settings
    assert report.startswith("Imported ") and "**Changed in the form** (" in report
    assert "Network Rank (Dimension): 4 → 16" in report
    kept = report.split("**Left as they were:**")[1]
    assert "Pretrained model name or path: the file's `C:/models/v1-5-pruned-emaonly.safetensors` is not on " \
           "this computer; yours stays" in kept
    assert "Output directory: the file's `C:/lora/emi/model`" in kept
    assert "Trained Model output name: stays with your output folder (the file has `emi_v1`)" in kept
    assert "Training comment: empty in the file" in kept and "yours among them: " in kept and "Keep the best" in kept
    # the CLI's report is the file's own: the GUI's section comes only with a form
    plain = ConfigurationTab(tmp_path / "state", None).load_path(str(kohya))[-1]
    assert "---" not in plain and report.startswith(plain)


def test_a_kohya_json_whose_paths_are_here_sets_them_and_an_empty_form_gets_no_foreign_paths(tmp_path):
    model, img = tmp_path / "model.safetensors", tmp_path / "img"
    model.write_bytes(b"x")
    img.mkdir()
    kohya = tmp_path / "here.json"
    kohya.write_text(json.dumps({**KOHYA_GUI_JSON, "pretrained_model_name_or_path": str(model),
                                 "train_data_dir": str(img), "output_dir": str(tmp_path / "new_out")}),
                     encoding="utf-8")
    out = ConfigurationTab(tmp_path / "state", None).load_path(
        str(kohya), *_form(pretrained_model_name_or_path="/old.safetensors", output_name="mine"))
    shown = _shown(out[:len(SETTINGS)])
    assert (shown["pretrained_model_name_or_path"], shown["train_data_dir"]) == (str(model), str(img))
    assert (shown["output_dir"], shown["output_name"]) == (str(tmp_path / "new_out"), "emi_v1")  # made by the run
    # a fresh form: a C:/ path is not put into an empty field, the report says to set it
    merged = merge(dict(DEFAULTS), {"pretrained_model_name_or_path": "C:/m.safetensors", "network_dim": 8},
                   {"pretrained_model_name_or_path", "network_dim"})
    assert merged.values == {"network_dim": 8}
    assert merged.kept == [("pretrained_model_name_or_path", "the file's `C:/m.safetensors` is not on this "
                                                              "computer; set it here")]


def test_a_toml_config_and_a_preset_change_only_the_settings_they_name(tmp_path):
    config = tmp_path / "partial.toml"
    config.write_text('[network]\nnetwork_dim = 24\n[training]\nlearning_rate = 0.0003\n', encoding="utf-8")
    tab = ConfigurationTab(tmp_path / "state", None)
    form = _form(pretrained_model_name_or_path="/m.safetensors", network_alpha=2.0, max_train_epochs="7")
    out = tab.load_path(str(config), *form)
    assert _shown(out[:len(SETTINGS)]) == {"network_dim": 24, "learning_rate": 0.0003}
    assert out[-1].startswith(f"Loaded {config}.") and "3 setting(s)" not in out[-1]
    assert "Network Rank (Dimension): 4 → 24" in out[-1] and "Max train epoch" in out[-1].split("Left as")[1]
    out = tab.apply_preset("sd15_character_8gb", *form)
    shown = _shown(out[:len(SETTINGS)])
    assert shown["network_dim"] == 16 and "pretrained_model_name_or_path" not in shown and out[-2] == ""
    assert "**Left as they were:**" in out[-1] and "Pretrained model name or path" in out[-1].split("Left as")[1]


def test_the_form_is_saved_without_secrets_restored_and_cleared_by_new_config(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    lora = LoraTab(state, manager=None, roots=None)
    form = _form(network_dim=32, pretrained_model_name_or_path="/m.safetensors", wandb_api_key="secret-key",
                 huggingface_token="hf_secret", max_train_epochs="", shuffle_caption=True, caption_extension="")
    assert lora.form_changed(False, "", *form) == gr.skip()  # before the page restored the form: nothing saved
    assert not (state / FORM_FILE).exists()
    lora.form_changed(True, "", *form)
    text = (state / FORM_FILE).read_text(encoding="utf-8")
    assert "secret" not in text and "wandb_api_key" not in text and "huggingface_token" not in text
    assert "network_dim = 32" in text and "shuffle_caption = true" in text and "learning_rate" not in text
    restored = lora.restore_form()
    assert restored[-1] is True and "from last time are back" in restored[-2]
    values = dict(zip([s.name for s in SETTINGS], restored))
    assert (values["network_dim"], values["pretrained_model_name_or_path"], values["caption_extension"]) == \
        (32, "/m.safetensors", "")
    assert values["wandb_api_key"] == DEFAULTS["wandb_api_key"] and load_form(state)["shuffle_caption"] is True
    # New config: the defaults, the saved form gone, the old form kept for Undo
    out = lora.config.new_config(*form)
    assert not (state / FORM_FILE).exists() and _shown(out[:len(SETTINGS)]) == DEFAULTS
    previous, undo = out[-2], out[-1]
    assert previous["network_dim"] == 32 and undo["visible"] is True
    back = lora.config.undo_new_config(previous)
    assert _shown(back[:len(SETTINGS)])["network_dim"] == 32 and back[-1]["visible"] is False
    # a form of defaults only leaves no file behind
    save_form(state, dict(DEFAULTS))
    assert not (state / FORM_FILE).exists() and lora.restore_form()[-1] is True


def test_a_printed_command_is_marked_out_of_date_when_the_form_changes(tmp_path):
    from lora_studio.gui.form_state import fingerprint

    lora = LoraTab(tmp_path / "state", manager=None, roots=None)
    form = _form(network_dim=8)
    printed = fingerprint(form)
    assert lora.form_changed(True, printed, *form)["label"] == COMMAND_LABEL
    assert lora.form_changed(True, printed, *_form(network_dim=9))["label"] == COMMAND_STALE
    assert lora.form_changed(True, "", *form) == gr.skip()  # nothing printed: nothing to mark
