"""The Test tab follows the run it tests, renders say where they are, and the comparison grid is shown at its natural
size: in a real browser (Playwright + Debian chromium) against ``lora-studio gui``.

The run is the suite's trained run (64 px, the demo's tiny model and concept), found completed by the GUI at its
start; the comparison jobs hold after their second image (``training.faults``) until the test has seen the page say
so, then go on."""

from __future__ import annotations

import json
import re

import pytest
from PIL import Image
from playwright.sync_api import expect, sync_playwright

from conftest import cli_path
from gui_helpers import ARTIFACTS, CHROMIUM_ARGS, chromium_path, finished_copy_of, open_tab, running_gui
from lora_studio.training.faults import HOLD_AFTER_IMAGE

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def gui(trained_run, tmp_path_factory):
    root = tmp_path_factory.mktemp("gui-test-and-grid")
    out, config = finished_copy_of(trained_run, root)
    release = root / "release"
    with running_gui(cli_path(), root / "state", root / "gui.log",
                     env={HOLD_AFTER_IMAGE: f"2:{release}"}) as (url, proc):
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            expect(page.get_by_role("button", name="Start training")).to_be_visible(timeout=30_000)
            yield {"page": page, "state": root / "state", "out": out, "release": release, "run": trained_run}
            browser.close()
        assert proc.poll() is None, "the GUI process died during the tests"


def _sizes(images) -> list[dict]:
    """Each <img>: its natural size and the size it is drawn at."""
    return images.evaluate_all("els => els.map(e => ({natural: [e.naturalWidth, e.naturalHeight], "
                               "shown: [e.getBoundingClientRect().width, e.getBoundingClientRect().height]}))")


def _release(gui) -> None:
    gui["release"].write_text("go", encoding="utf-8")


def test_the_comparison_grid_says_where_it_is_and_opens_at_its_natural_size(gui):
    page = gui["page"]
    open_tab(page, "Runs")
    status = page.locator("#compare-status")  # 2 prompts x (the base image + 2 files x 4 strengths)
    expect(status).to_contain_text(re.compile(r"Comparison grid: image 2 of 18 · ETA \d+:\d\d"), timeout=120_000)
    _release(gui)
    expect(status).to_contain_text("rows are the saved files", timeout=120_000)
    grids = page.locator("#compare-grid img")
    expect(grids).to_have_count(2)
    expect(page.locator("#compare-grid")).to_contain_text("lsdemo shape, red disc · seed 3")
    files = sorted((gui["out"] / "compare").glob("test_lora_compare_*.png"))
    for shown, path in zip(_sizes(grids), files):
        assert shown["natural"] == list(Image.open(path).size) and shown["natural"][0] > 64 * 5
        assert shown["shown"] == shown["natural"]  # not blown up into a square tile, not shrunk
    link = page.locator("#compare-grid a", has_text="open full size").first
    assert page.request.get(page.url + link.get_attribute("href")).body() == files[0].read_bytes()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "gui-runs-grid.png"), full_page=True)


def test_test_this_file_renders_with_the_runs_resolution_prompts_sampler_and_steps(gui):
    page = gui["page"]
    open_tab(page, "Runs")
    expect(page.locator("#compare-status")).to_contain_text("rows are the saved files", timeout=120_000)
    final = gui["run"]["file"]
    expect(page.locator("#run-file input")).to_have_value("test_lora.safetensors (final)")
    page.get_by_role("button", name="Test this file").click()
    expect(page.locator("#test-files textarea")).to_have_value(str(final), timeout=10_000)
    # the run's prompt file, each line with its options; the line without --d gets the run's seed + 1 (1234 + 1)
    prompts = ("lsdemo shape, red disc --n blurry --w 64 --h 64 --d 3 --s 3 --l 5\n"
               "another prompt --w 64 --h 64 --s 2 --d 1235")
    expect(page.locator("#test-prompts textarea")).to_have_value(prompts)
    for name, value in (("width", "64"), ("height", "64"), ("steps", "30"), ("cfg", "7.5")):
        expect(page.locator(f"#test-{name} input")).to_have_value(value)
    expect(page.locator("#test-sampler input")).to_have_value("ddim")  # the run's sample_sampler
    expect(page.locator("#test-seeds textarea")).to_have_value("")  # each prompt's own seed
    expect(page.locator("#test-model textarea")).to_have_value(str(gui["run"]["model"]))
    remembered = json.loads((gui["state"] / "test_settings.json").read_text(encoding="utf-8"))["settings"]
    assert remembered["prompts"] == prompts and remembered["width"] == 64  # a reload shows the same
    page.get_by_role("button", name="Render").click()
    status, progress = page.locator("#test-status"), page.locator("#test-progress")
    # 2 prompts x (the base image + 4 strengths) at 64 px; held after the 2nd image while the page is looked at
    expect(status).to_contain_text(re.compile(r"Rendering: image 2 of 10 · ETA \d+:\d\d"), timeout=120_000)
    expect(progress.locator("[data-step='2'][data-total='10']")).to_be_attached()
    expect(progress).to_contain_text(re.compile(r"Image 2 / 10 · Test tab images · ETA \d+:\d\d"))
    _release(gui)
    expect(status).to_contain_text("Done: 2 grid(s), 10 image(s)", timeout=60_000)
    images = page.locator("#test-gallery img")
    expect(images).to_have_count(10)
    assert all(shown["natural"] == [64, 64] for shown in _sizes(images))
    expect(page.locator("#test-gallery")).to_contain_text("test_lora · strength 1 · seed 1235")
    grids = page.locator("#test-grids img")
    expect(grids).to_have_count(2)
    assert all(shown["shown"] == shown["natural"] for shown in _sizes(grids))
    page.screenshot(path=str(ARTIFACTS / "gui-test-tab-from-run.png"), full_page=True)
