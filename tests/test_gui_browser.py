"""The GUI in a real browser: headless Debian chromium driven by Playwright, against ``lora-studio gui``."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from conftest import cli_path
from gui_helpers import ARTIFACTS, CHROMIUM_ARGS, chromium_path, field, open_tab, running_gui, set_field
from lora_studio.config.schema import BY_NAME, SETTINGS

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def gui(tmp_path_factory):
    root = tmp_path_factory.mktemp("gui")
    with running_gui(cli_path(), root / "state", root / "gui.log", allow=[root]) as (url, proc):
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
            yield {"url": url, "browser": browser, "state": root / "state", "root": root, "proc": proc}
            browser.close()
        assert proc.poll() is None, "the GUI process died during the tests"


@pytest.fixture
def page(gui):
    context = gui["browser"].new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    page.goto(gui["url"])
    expect(page.get_by_role("button", name="Start training")).to_be_visible(timeout=30_000)
    yield page
    context.close()


def load_demo(page) -> None:
    open_tab(page, "LoRA", "Configuration")
    page.get_by_role("button", name="Try the demo").click()
    expect(page.locator("#config-status")).to_contain_text("Demo loaded", timeout=120_000)


def runs_dirs(state: Path) -> list[Path]:
    return sorted((state / "runs").glob("*/run.json"))


def test_every_tab_shows_its_kohya_labels_and_help_on_hover(page):
    expected = {
        # the Model tab holds the model settings that are not Advanced (Clip skip is Advanced: checked there)
        ("LoRA", "Model"): [s.label for s in SETTINGS if s.group == "model" and not s.advanced],
        ("LoRA", "Folders"): ["Image folder", "Output directory", "Trained Model output name"],
        ("LoRA", "Parameters", "Basic"): ["Network Rank (Dimension)", "Network Alpha", "Train batch size",
                                          "Max train epoch", "Learning rate", "Optimizer", "LR Scheduler"],
        ("LoRA", "Parameters", "Advanced"): ["Gradient checkpointing", "Keep n tokens", "Clip skip", "Min SNR gamma"],
        ("LoRA", "Parameters", "Samples"): ["Sample prompts file", "Sample every n epochs", "Sample sampler"],
        ("LoRA", "Dataset preparation"): ["Instance prompt", "Class prompt", "Destination training folder"],
        ("LoRA", "Configuration"): ["Presets", "Config file"],
        ("Runs",): ["Current run", "Queue", "History", "Show run", "Saved files of this run"],
        ("Test",): ["Base model", "LoRA files (one a line)", "Strengths", "Seeds (empty: each prompt's --d)",
                    "Sampler", "CFG"],
    }
    assert {"Pretrained model name or path", "VAE", "v2"} <= set(expected[("LoRA", "Model")])
    for tabs, labels in expected.items():
        open_tab(page, *tabs)
        for label in labels:
            expect(page.get_by_text(label, exact=True).first).to_be_visible()
    open_tab(page, "LoRA", "Parameters", "Basic")
    block = page.locator("#setting-network_dim")
    block.hover()
    expect(block).to_have_attribute("title", BY_NAME["network_dim"].help)
    expect(page.get_by_role("button", name="Stop training").first).to_be_visible()


def test_preset_save_new_config_load_gives_the_same_config(page, gui):
    load_demo(page)
    open_tab(page, "LoRA", "Configuration")
    preset = page.locator("#preset input")
    preset.click()
    page.get_by_role("option", name="sd15_character_8gb").click()
    expect(page.locator("#config-status")).to_contain_text("SD1.5 character (8 GB)")
    open_tab(page, "Parameters", "Basic")
    expect(field(page, "network_dim")).to_have_value("16")
    expect(field(page, "optimizer_type")).to_have_value("AdamW8bit")
    open_tab(page, "Folders")  # the preset left the demo's folders alone
    expect(field(page, "train_data_dir")).to_have_value(str(gui["state"] / "demo" / "img"))
    # values a careless GUI would drop: zeros and an empty optional number
    open_tab(page, "Parameters", "Advanced")
    set_field(page, "noise_offset", 0)
    set_field(page, "max_grad_norm", 0)
    set_field(page, "keep_tokens", 0)
    open_tab(page, "Parameters", "Basic")
    set_field(page, "learning_rate", "0.0003")

    saved = gui["root"] / "saved" / "roundtrip.toml"
    open_tab(page, "Configuration")
    page.locator("#config-path textarea, #config-path input").first.fill(str(saved))
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.locator("#config-status")).to_contain_text(f"Saved {saved}")
    first = saved.read_text(encoding="utf-8")
    assert "noise_offset = 0.0" in first and "max_grad_norm = 0.0" in first and "keep_tokens = 0" in first
    assert "network_dim = 16" in first and "learning_rate = 0.0003" in first

    # (a reload keeping the form: test_gui_browser_form_state.py)
    page.get_by_role("button", name="New config").click()
    open_tab(page, "Parameters", "Basic")
    expect(field(page, "network_dim")).to_have_value("4")  # back to the defaults
    open_tab(page, "Configuration")
    page.locator("#config-path textarea, #config-path input").first.fill(str(saved))
    page.get_by_role("button", name="Load", exact=True).click()
    expect(page.locator("#config-status")).to_contain_text("Loaded")
    open_tab(page, "Parameters", "Basic")
    expect(field(page, "network_dim")).to_have_value("16")
    expect(field(page, "learning_rate")).to_have_value("0.0003")
    open_tab(page, "Parameters", "Advanced")
    expect(field(page, "noise_offset")).to_have_value("0")

    again = gui["root"] / "saved" / "roundtrip-again.toml"
    open_tab(page, "Configuration")
    page.locator("#config-path textarea, #config-path input").first.fill(str(again))
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.locator("#config-status")).to_contain_text(f"Saved {again}")
    assert again.read_text(encoding="utf-8") == first

    # download through the browser, as a user sharing the file would
    page.get_by_role("button", name="Prepare config for download").click()
    link = page.locator("#config-download a").first
    expect(link).to_be_visible()
    with page.expect_download() as info:
        link.click()
    downloaded = gui["root"] / "downloaded.toml"
    info.value.save_as(downloaded)
    assert downloaded.read_text(encoding="utf-8") == first


def test_a_bad_field_shows_its_message_and_starts_nothing(page, gui):
    load_demo(page)
    before = runs_dirs(gui["state"])
    open_tab(page, "Parameters", "Basic")
    set_field(page, "learning_rate", "-1")
    open_tab(page, "Folders")
    set_field(page, "output_name", "bad/name")
    page.get_by_role("button", name="Start training").click()
    report = page.locator("#check-report")
    expect(report).to_contain_text("Fix 2 setting(s) before starting")
    expect(page.locator("#setting-output_name")).to_contain_text("must be a plain file name")
    open_tab(page, "Parameters", "Basic")
    expect(page.locator("#setting-learning_rate")).to_contain_text("must be between 0 and 10, got -1")
    time.sleep(1.5)
    assert runs_dirs(gui["state"]) == before
    # fixing the fields clears the messages
    set_field(page, "learning_rate", "0.001")
    open_tab(page, "Folders")
    set_field(page, "output_name", "good_name")
    page.get_by_role("button", name="Check settings").click()
    expect(report).to_contain_text("Ready: 60 steps = 2 epoch(s) of 30 step(s)")  # 2 of 8 images validate
    expect(page.locator("#setting-output_name")).not_to_contain_text("must be a plain file name")
    # a text file given as the model is named at Check settings, next to its field (not after Start)
    notes = gui["root"] / "model.txt"
    notes.write_text("the model is on civitai\n", encoding="utf-8")
    open_tab(page, "Model")
    set_field(page, "pretrained_model_name_or_path", str(notes))
    page.get_by_role("button", name="Check settings").click()
    expect(page.locator("#setting-pretrained_model_name_or_path")).to_contain_text("cannot read")
    expect(report).to_contain_text("Fix 1 setting(s)")


def test_demo_run_shows_progress_chart_samples_file_validation_grid_and_tests_a_file(page, gui):
    load_demo(page)
    page.get_by_role("button", name="Print training command").click()
    command = page.locator("#command-box textarea")
    expect(command).to_have_value(lambda_contains("launch --num_machines 1 --num_processes 1"))
    expect(command).to_have_value(lambda_contains("-m lora_studio.train --config "))
    expect(command).to_have_value(lambda_contains("network_dim = 4"))
    page.get_by_role("button", name="Start training").click()
    progress = page.locator("#run-progress")
    expect(progress).to_be_visible(timeout=10_000)  # Start switches to the Runs tab
    expect(progress.locator("[data-status=running]")).to_be_attached(timeout=60_000)
    expect(progress).to_contain_text("it/s", timeout=60_000)
    expect(progress).to_contain_text("ETA")
    expect(progress).to_contain_text("Step 60 / 60", timeout=300_000)
    expect(progress).to_contain_text("Finished", timeout=30_000)
    expect(page.locator("#loss-chart .mark-line path").first).to_be_attached(timeout=10_000)
    expect(page.locator("#loss-chart")).to_contain_text("validation")  # the series beside the training loss
    status = page.locator("#run-status")
    expect(status).to_contain_text("Best: validation loss")
    expect(status).to_contain_text("demo_lora-best.safetensors")
    expect(status).to_contain_text("Ended:")
    expect(page.locator("#sample-gallery img")).to_have_count(2, timeout=10_000)
    output = gui["state"] / "demo" / "output" / "demo_lora.safetensors"
    expect(page.locator("#saved-files")).to_contain_text(str(output))
    assert output.is_file() and output.stat().st_size > 10_000
    assert (output.parent / "demo_lora_config.toml").is_file()
    expect(page.locator("#run-log textarea")).to_have_value(lambda_contains("completed after 60 steps"))
    expect(page.locator("#run-history")).to_contain_text("Finished")
    # the run's comparison grid, made by the job queued when it completed
    expect(page.locator("#compare-status")).to_contain_text("rows are the saved files", timeout=300_000)
    expect(page.locator("#compare-grid img").first).to_be_visible()
    expect(page.locator("#compare-grid")).to_contain_text("lsdemo shape, red disc, blue background · seed 1")
    expect(page.locator("#run-history")).to_contain_text("comparison grid")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.wait_for_timeout(1500)
    page.screenshot(path=str(ARTIFACTS / "gui-after-demo-run.png"), full_page=True)
    assert (ARTIFACTS / "gui-after-demo-run.png").stat().st_size > 20_000

    # test the best file: into the Test tab, rendered at strengths 0 and 1
    best = output.parent / "demo_lora-best.safetensors"
    expect(page.locator("#run-file input")).to_have_value(lambda_contains("demo_lora-best.safetensors"))
    page.get_by_role("button", name="Test this file").click()
    expect(page.locator("#test-files textarea")).to_have_value(str(best), timeout=10_000)
    model = gui["state"] / "demo" / "model" / "tiny-sd1.safetensors"
    expect(page.locator("#test-model textarea")).to_have_value(str(model))
    page.locator("#test-prompts textarea").fill("lsdemo shape, red disc --s 4")
    page.locator("#test-strengths textarea").fill("0, 1")
    page.locator("#test-seeds textarea").fill("5")
    for name, value in (("width", 64), ("height", 64)):
        page.locator(f"#test-{name} input").fill(str(value))
        page.locator(f"#test-{name} input").press("Tab")
    page.get_by_role("button", name="Render").click()
    expect(page.locator("#test-gallery img")).to_have_count(2, timeout=300_000)
    expect(page.locator("#test-status")).to_contain_text("Done")
    expect(page.locator("#test-gallery")).to_contain_text("demo_lora-best · strength 1 · seed 5")
    expect(page.locator("#test-grids")).to_contain_text("lsdemo shape, red disc · seed 5")
    assert "lsdemo shape, red disc --s 4" in (gui["state"] / "test_settings.json").read_text(encoding="utf-8")
    page.screenshot(path=str(ARTIFACTS / "gui-test-tab.png"), full_page=True)

    # the Tools tab: resize the best file to rank 2 as a queued job, then inspect the result
    open_tab(page, "Tools", "Resize")
    small = output.parent / "demo_lora-r2.safetensors"
    page.locator("#tool-resize-source textarea").fill(str(best))
    page.locator("#tool-resize-out textarea").fill(str(small))
    page.locator("#tool-resize-new_rank textarea").fill("2")
    page.locator("#tool-resize-run").click()
    expect(page.locator("#tool-progress")).to_contain_text("Finished", timeout=120_000)
    expect(page.locator("#tool-status")).to_contain_text(f"wrote {small}")
    expect(page.locator("#tool-report textarea")).to_have_value(lambda_contains("mean Frobenius share kept"))
    assert small.is_file()
    open_tab(page, "Inspect")
    page.locator("#tool-inspect-file textarea").fill(str(small))
    page.locator("#tool-inspect-run").click()
    expect(page.locator("#tool-report textarea")).to_have_value(lambda_contains("rank 2 "), timeout=120_000)
    expect(page.locator("#tool-report textarea")).to_have_value(lambda_contains("history: resize"))
    page.screenshot(path=str(ARTIFACTS / "gui-tools-tab.png"), full_page=True)


def lambda_contains(text: str):
    import re

    return re.compile(".*" + re.escape(text) + ".*", re.S)


def test_stop_saves_and_the_queue_runs_next(page, gui):
    load_demo(page)
    open_tab(page, "Folders")
    set_field(page, "output_name", "demo_long")
    open_tab(page, "Parameters", "Basic")
    set_field(page, "max_train_epochs", 500)
    page.get_by_role("button", name="Start training").click()
    progress = page.locator("#run-progress")
    expect(progress).to_contain_text("demo_long", timeout=10_000)
    expect(progress).to_contain_text("it/s", timeout=90_000)

    # a second Start while training: it waits in the queue
    open_tab(page, "LoRA", "Folders")
    set_field(page, "output_name", "demo_next")
    open_tab(page, "Parameters", "Basic")
    set_field(page, "max_train_epochs", "")  # a short run: 4 steps
    set_field(page, "max_train_steps", 4)
    open_tab(page, "Samples")
    set_field(page, "sample_prompts", "")  # no comparison grid queued after it: the next tests start at once
    set_field(page, "sample_every_n_epochs", "")
    page.get_by_role("button", name="Start training").click()
    expect(page.locator("#run-queue")).to_contain_text("demo_next", timeout=10_000)

    page.locator("#runs-stop").click()
    expect(page.locator("#stop-message")).to_contain_text("saves after the current step")
    out = gui["state"] / "demo" / "output"
    expect(page.locator("#run-history")).to_contain_text("Stopped (saved)", timeout=60_000)
    assert (out / "demo_long.safetensors").is_file()
    history = page.locator("#run-history")
    expect(history).to_contain_text("demo_long")
    # the queued run started by itself and finished
    expect(history).to_contain_text("demo_next", timeout=120_000)
    expect(page.locator("#run-queue")).not_to_contain_text("demo_next")
    assert (out / "demo_next.safetensors").is_file()


def test_upload_a_toml_and_import_a_kohya_json(page, gui):
    from test_kohya_import import KOHYA_GUI_JSON
    import json

    toml = gui["root"] / "upload.toml"
    toml.write_text('[network]\nnetwork_dim = 24\n[folders]\noutput_name = "uploaded"\n', encoding="utf-8")
    open_tab(page, "LoRA", "Configuration")
    page.locator("#config-upload input[type=file]").set_input_files(str(toml))
    expect(page.locator("#config-status")).to_contain_text("Loaded")
    open_tab(page, "Parameters", "Basic")
    expect(field(page, "network_dim")).to_have_value("24")

    kohya = gui["root"] / "kohya.json"
    kohya.write_text(json.dumps(KOHYA_GUI_JSON), encoding="utf-8")
    open_tab(page, "Configuration")
    page.locator("#config-upload input[type=file]").set_input_files(str(kohya))
    expect(page.locator("#config-status")).to_contain_text("from the Kohya_ss configuration")
    expect(page.locator("#config-status")).to_contain_text("Sample prompts were written to")
    open_tab(page, "Parameters", "Basic")
    expect(field(page, "network_dim")).to_have_value("16")
    expect(field(page, "optimizer_type")).to_have_value("AdamW8bit")
    open_tab(page, "Folders")  # the file's output folder (C:/...) is not here: the output name stays with the form's
    expect(field(page, "output_name")).to_have_value("uploaded")


def test_dataset_preparation_tab_builds_folders_and_summarises(page, gui):
    load_demo(page)
    source = gui["state"] / "demo" / "img" / "10_lsdemo shape"
    dest = gui["root"] / "prepared"
    open_tab(page, "Dataset preparation")
    page.locator("#prep-instance textarea").fill("emi")
    page.locator("#prep-class textarea").fill("person")
    page.locator("#prep-images textarea").fill(str(source))
    page.locator("#prep-repeats input").fill("5")
    page.locator("#prep-destination textarea").fill(str(dest))
    page.get_by_role("button", name="Prepare training folders").click()
    expect(page.locator("#prep-report")).to_contain_text("copied 16 file(s)")
    assert len(list((dest / "img" / "5_emi person").glob("*.png"))) == 8
    assert len(list(source.glob("*.png"))) == 8  # the originals are still there
    page.get_by_role("button", name="Dataset summary").click()
    summary = page.locator("#dataset-summary")
    expect(summary).to_contain_text("8 images (30 training with repeats, 0 regularisation, 2 held out for "
                                    "validation), 15 batches per epoch")
    expect(summary).to_contain_text("30 steps = 2 epoch(s) of 15 step(s)")
    open_tab(page, "Folders")
    expect(field(page, "train_data_dir")).to_have_value(str(dest / "img"))
    expect(field(page, "output_dir")).to_have_value(str(dest / "model"))


def test_a_run_that_dies_says_why(page, gui, tiny_models):
    """A model that Check settings cannot fault (its header, names and parts are sound) but that fails to load."""
    from safetensors.torch import load_file, save_file

    weights = load_file(str(tiny_models["single"]))
    name = next(k for k in weights if k.startswith("model.diffusion_model.") and weights[k].ndim == 4)
    weights[name] = weights[name][:1]  # one output channel where the U-Net has more
    broken = gui["root"] / "broken.safetensors"
    save_file(weights, str(broken))
    load_demo(page)
    open_tab(page, "Model")
    set_field(page, "pretrained_model_name_or_path", broken)
    open_tab(page, "Folders")
    set_field(page, "output_name", "broken_run")
    page.get_by_role("button", name="Start training").click()
    status = page.locator("#run-status")
    expect(status).to_contain_text("broken_run", timeout=10_000)
    expect(status).to_contain_text("Failed", timeout=90_000)
    expect(status).to_contain_text("broken.safetensors")
    expect(status).to_contain_text("is this a complete checkpoint of one model?")


def test_dataset_tab_edits_captions_and_reports_health(page, gui):
    load_demo(page)
    page.get_by_role("button", name="Check dataset").click()  # the LoRA tab's own folders
    expect(page.locator("#check-report")).to_contain_text("Dataset: ✗ not ready", timeout=60_000)
    expect(page.locator("#check-report")).to_contain_text("steps per epoch")
    folder = gui["state"] / "demo" / "img" / "10_lsdemo shape"
    first = sorted(folder.glob("*.png"))[0]
    old = first.with_suffix(".txt").read_text(encoding="utf-8").strip()
    open_tab(page, "Dataset", "Caption editor")
    page.locator("#editor-folder textarea").fill(str(folder))
    page.locator("#editor-load").click()
    expect(page.locator("#editor-where")).to_contain_text("8 image(s), page 1 of 1")
    expect(page.locator("#editor-gallery img")).to_have_count(8)
    expect(page.locator("#editor-tags")).to_contain_text("lsdemo shape")
    page.locator("#editor-gallery img").first.click()
    expect(page.locator("#editor-caption textarea")).to_have_value(old)
    page.locator("#editor-caption textarea").fill(old + ", edited by hand")
    page.locator("#editor-save").click()
    expect(page.locator("#editor-status")).to_contain_text(f"Saved {first.stem}.txt")
    assert first.with_suffix(".txt").read_text(encoding="utf-8").strip() == old + ", edited by hand"
    page.locator("#editor-tag textarea").fill("studio light")
    page.locator("#editor-apply").click()
    expect(page.locator("#editor-status")).to_contain_text("Changed 8 caption(s)")
    expect(page.locator("#editor-tags")).to_contain_text("studio light")
    assert first.with_suffix(".txt").read_text(encoding="utf-8").startswith("studio light, ")
    page.locator("#editor-undo").click()
    expect(page.locator("#editor-status")).to_contain_text("Undid: add 'studio light' (8 caption(s))")
    assert first.with_suffix(".txt").read_text(encoding="utf-8").strip() == old + ", edited by hand"
    open_tab(page, "Health report")
    page.locator("#health-folder textarea").fill(str(folder.parent))
    page.locator("#health-check").click()
    report = page.locator("#health-report")
    expect(report).to_contain_text("Dataset: ✗ not ready", timeout=60_000)
    expect(report).to_contain_text("10_lsdemo shape")
    page.screenshot(path=str(ARTIFACTS / "gui-dataset-tab.png"), full_page=True)
