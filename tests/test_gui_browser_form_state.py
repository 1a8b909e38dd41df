"""The LoRA tab's form keeps what the user set, in a real browser (Playwright + Debian chromium) against
``lora-studio gui``: a Kohya_ss JSON from another computer and a preset leave the model and folders alone (and the
report says so), a refilled form drops the old "Fix N setting(s)", a printed command is marked out of date after an
edit, and the form survives a reload until "New config" (which Undo takes back)."""

from __future__ import annotations

import json
import re
import time

import pytest
from playwright.sync_api import expect, sync_playwright

from conftest import cli_path
from gui_helpers import CHROMIUM_ARGS, chromium_path, field, open_tab, running_gui, set_field
from kohya_shapes import KOHYA_GUI_JSON
from lora_studio.gui.form_state import FORM_FILE

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def gui(tmp_path_factory):
    root = tmp_path_factory.mktemp("gui-form-state")
    (root / "img" / "10_emi person").mkdir(parents=True)
    (root / "model.safetensors").write_bytes(b"not really a model")
    with running_gui(cli_path(), root / "state", root / "gui.log", allow=[root]) as (url, proc):
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
            yield {"url": url, "browser": browser, "root": root, "state": root / "state"}
            browser.close()
        assert proc.poll() is None, "the GUI process died during the tests"


@pytest.fixture
def page(gui):
    context = gui["browser"].new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.goto(gui["url"])
    expect(page.get_by_role("button", name="Start training")).to_be_visible(timeout=30_000)
    yield page
    context.close()


def _saved(gui, text: str, timeout: float = 20) -> str:
    """The saved form once it holds ``text`` (it is written a moment after an edit)."""
    path = gui["state"] / FORM_FILE
    deadline = time.time() + timeout
    while time.time() < deadline:
        saved = path.read_text(encoding="utf-8") if path.is_file() else ""
        if text in saved:
            return saved
        time.sleep(0.2)
    raise AssertionError(f"{path} never held {text!r}: {saved!r}")


def _fill_mine(page, gui) -> None:
    root = gui["root"]
    open_tab(page, "LoRA", "Model")
    set_field(page, "pretrained_model_name_or_path", root / "model.safetensors")
    open_tab(page, "Folders")
    set_field(page, "train_data_dir", root / "img")
    set_field(page, "output_dir", root / "out")
    set_field(page, "output_name", "mine")


def test_an_imported_kohya_json_and_a_preset_keep_the_model_and_folders_and_refresh_the_status(page, gui):
    root = gui["root"]
    _fill_mine(page, gui)
    # a printed command goes out of date with the first edit after it
    page.get_by_role("button", name="Print training command").click()
    command = page.locator("#command-box")
    expect(command.locator("textarea")).to_have_value(re.compile("network_dim = 4"))
    expect(command).not_to_contain_text("OUT OF DATE")
    open_tab(page, "Parameters", "Basic")
    set_field(page, "learning_rate", "-1")
    expect(command).to_contain_text("OUT OF DATE")
    page.get_by_role("button", name="Check settings").click()
    expect(page.locator("#check-report")).to_contain_text("Fix ")
    expect(page.locator("#setting-learning_rate")).to_have_class(re.compile("ls-invalid"))

    # a Kohya_ss JSON saved on another computer (C:/ paths, an empty log folder)
    kohya = root / "emi.json"
    kohya.write_text(json.dumps(KOHYA_GUI_JSON), encoding="utf-8")
    open_tab(page, "Configuration")
    page.locator("#config-upload input[type=file]").set_input_files(str(kohya))
    status = page.locator("#config-status")
    expect(status).to_contain_text("from the Kohya_ss configuration")
    expect(status).to_contain_text("Left as they were")
    expect(status).to_contain_text("C:/models/v1-5-pruned-emaonly.safetensors is not on this computer; yours stays")
    expect(status).to_contain_text("stays with your output folder (the file has emi_v1)")
    expect(status).to_contain_text("Network Rank (Dimension): 4 → 16")
    expect(page.locator("#check-report")).not_to_contain_text("Fix")  # the old problems went with the old form
    open_tab(page, "Parameters", "Basic")
    expect(page.locator("#setting-learning_rate")).not_to_have_class(re.compile("ls-invalid"))
    expect(field(page, "network_dim")).to_have_value("16")
    open_tab(page, "Model")
    expect(field(page, "pretrained_model_name_or_path")).to_have_value(str(root / "model.safetensors"))
    open_tab(page, "Folders")
    for name, value in (("train_data_dir", root / "img"), ("output_dir", root / "out"), ("output_name", "mine")):
        expect(field(page, name)).to_have_value(str(value))

    # a preset: its settings change, the model and folders stay, and it says so
    open_tab(page, "Configuration")
    page.locator("#preset input").click()
    page.get_by_role("option", name="sd15_character_8gb").click()
    expect(status).to_contain_text("SD1.5 character (8 GB)")
    expect(status).to_contain_text("setting(s) the preset does not name; yours among them: Pretrained model")
    open_tab(page, "Model")
    expect(field(page, "pretrained_model_name_or_path")).to_have_value(str(root / "model.safetensors"))
    open_tab(page, "Folders")
    expect(field(page, "output_dir")).to_have_value(str(root / "out"))


def test_the_form_survives_a_reload_and_new_config_resets_it_with_undo(page, gui):
    root = gui["root"]
    _fill_mine(page, gui)
    open_tab(page, "Parameters", "Basic")
    set_field(page, "network_dim", 32)
    saved = _saved(gui, "network_dim = 32")
    assert str(root / "model.safetensors") in saved and 'output_name = "mine"' in saved

    page.reload()
    expect(page.locator("#config-status")).to_contain_text("Your settings from last time are back", timeout=30_000)
    open_tab(page, "LoRA", "Parameters", "Basic")
    expect(field(page, "network_dim")).to_have_value("32")
    open_tab(page, "Model")
    expect(field(page, "pretrained_model_name_or_path")).to_have_value(str(root / "model.safetensors"))

    open_tab(page, "Configuration")
    page.get_by_role("button", name="New config").click()
    expect(page.locator("#config-status")).to_contain_text("every setting is back to its default")
    open_tab(page, "Model")
    expect(field(page, "pretrained_model_name_or_path")).to_have_value("")
    open_tab(page, "Parameters", "Basic")
    expect(field(page, "network_dim")).to_have_value("4")
    deadline = time.time() + 20
    while (gui["state"] / FORM_FILE).exists() and time.time() < deadline:
        time.sleep(0.2)
    assert not (gui["state"] / FORM_FILE).exists()  # the saved form is cleared with it

    open_tab(page, "Configuration")
    page.get_by_role("button", name="Undo new config").click()
    expect(page.get_by_role("button", name="Undo new config")).to_be_hidden()
    open_tab(page, "Parameters", "Basic")
    expect(field(page, "network_dim")).to_have_value("32")
    _saved(gui, "network_dim = 32")
