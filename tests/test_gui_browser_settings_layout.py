"""The settings' layout in a real browser: Advanced in sections with a filter, each field's help on screen, the LoRA
type by Kohya_ss's names and the full optimizer list, and the form following the model's family (Flux.1 / SD1). One
GUI and one page for the module."""

from __future__ import annotations

import re
import shutil

import pytest
from playwright.sync_api import expect

from conftest import cli_path
from gui_helpers import field, gui_page, open_tab, set_field
from lora_studio.config.schema import BY_NAME
from lora_studio.gui.settings_layout import section_id
from lora_studio.gui.widgets import first_sentence
from test_gui_flux import comfyui

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def gui(tmp_path_factory):
    root = tmp_path_factory.mktemp("gui-layout")
    with gui_page(cli_path(), root) as (page, _proc):
        yield {"page": page, "root": root}


def _header(page, title: str):
    """A section's heading: the button that opens and closes it."""
    return page.locator(f"#{section_id(title)} > button.label-wrap")


def _filter(page, text: str) -> None:
    page.locator("#advanced-filter textarea, #advanced-filter input").first.fill(text)


def test_advanced_sections_filter_and_help_on_screen(gui):
    page = gui["page"]
    open_tab(page, "LoRA", "Parameters", "Advanced")
    for title in ("Captions", "Noise and loss", "Memory and speed", "Saving and validation", "Logging", "Metadata"):
        expect(_header(page, title)).to_be_visible()
        expect(_header(page, title)).to_contain_text(title)
    # each field's first help sentence is on the page, not only in a tooltip
    for name in ("gradient_checkpointing", "noise_offset", "keep_tokens"):
        expect(page.locator(f"#setting-{name}").get_by_text(first_sentence(BY_NAME[name].help), exact=False)) \
            .to_be_visible()

    _header(page, "Memory and speed").click()  # closed by the user
    expect(page.locator("#setting-gradient_checkpointing")).to_be_hidden()
    _filter(page, "Gradient Checkpointing")
    expect(page.locator("#setting-gradient_checkpointing")).to_be_visible()  # its section opened again
    expect(page.locator("#ls-filter-note")).to_contain_text("1 setting(s) here match")
    for hidden in ("full_fp16", "keep_tokens", "noise_offset", "log_with"):
        expect(page.locator(f"#setting-{hidden}")).to_be_hidden()
    expect(page.locator("#section-memory-and-speed")).to_be_visible()
    for section in ("captions", "noise-and-loss", "logging"):
        expect(page.locator(f"#section-{section}")).to_be_hidden()

    _filter(page, "cache latents")  # a Basic setting is named where it is
    expect(page.locator("#ls-filter-note")).to_contain_text("Cache latents (Parameters > Basic)")
    _filter(page, "")
    for shown in ("keep_tokens", "noise_offset", "log_with"):
        expect(page.locator(f"#setting-{shown}")).to_be_visible()
    expect(page.locator("#setting-gradient_checkpointing")).to_be_hidden()  # the section the user closed is closed

    # a field Check settings marks opens its folded section: no problem stays hidden
    set_field(page, "keep_tokens", "-1")
    _header(page, "Captions").click()  # folded by the user
    expect(page.locator("#setting-keep_tokens")).to_be_hidden()
    page.get_by_role("button", name="Check settings").click()
    expect(page.locator("#setting-keep_tokens")).to_be_visible()
    expect(page.locator("#setting-keep_tokens")).to_contain_text("must be")
    set_field(page, "keep_tokens", "0")

    # the whole help without hovering (touch): the tab's "Full help" expander
    open_tab(page, "Basic")
    page.locator("#parameter-tabs").get_by_role("button", name="Full help of these settings").first.click()
    expect(page.get_by_text(BY_NAME["network_dim"].help.split(". ")[1])).to_be_visible()


def test_lora_type_by_kohya_names_sets_the_module_and_args_and_shows_a_loaded_one(gui):
    page, root = gui["page"], gui["root"]
    open_tab(page, "LoRA", "Parameters", "Basic")
    lora_type = page.locator("#lora-type input")
    expect(lora_type).to_have_value("Standard")
    lora_type.click()
    lora_type.fill("LoHa")  # the list filters as one types
    page.get_by_role("option", name="LyCORIS/LoHa").click()
    expect(page.locator("#lora-type")).to_contain_text("algo=loha")
    page.get_by_role("button", name="Print training command").click()
    command = page.locator("#command-box textarea")
    expect(command).to_have_value(re.compile(r'network_module = "lycoris.kohya".*"algo=loha"', re.S))
    open_tab(page, "Advanced")
    expect(field(page, "network_module")).to_have_value("lycoris.kohya")
    expect(field(page, "network_args")).to_have_value("algo=loha")

    config = root / "lokr.toml"  # a loaded config shows its Kohya_ss name
    config.write_text('network_module = "lycoris.kohya"\nnetwork_args = ["algo=lokr", "factor=4"]\n', encoding="utf-8")
    open_tab(page, "Configuration")
    page.locator("#config-path textarea, #config-path input").first.fill(str(config))
    page.get_by_role("button", name="Load", exact=True).click()
    expect(page.locator("#config-status")).to_contain_text("Loaded")
    open_tab(page, "Parameters", "Basic")
    expect(lora_type).to_have_value("LyCORIS/LoKr")

    optimizer = page.locator("#setting-optimizer_type input")  # every optimizer sd-scripts names is listed
    optimizer.click()
    for name in ("SGDNesterov", "DAdaptAdaGrad", "SGDScheduleFree", "PagedAdamW8bit"):
        expect(page.get_by_role("option", name=name, exact=True)).to_be_attached()
    optimizer.press("Escape")


def test_the_form_follows_the_models_family(gui, tiny_models):
    """Flux.1 in the browser (last in this module: it sets a model): choosing a Flux transformer says what it is,
    fills in the ae / clip_l / t5xxl files found beside it and shows the Flux fields instead of the Stable Diffusion
    ones; choosing an SD1 model does the opposite."""
    page, root = gui["page"], gui["root"]
    paths = comfyui(root / "flux")
    sd1 = shutil.copy(tiny_models["single"], root / "tiny-sd1.safetensors")
    open_tab(page, "LoRA", "Model")
    expect(page.locator("#setting-v2")).to_be_visible()  # no model yet: every field
    expect(page.locator("#setting-ae")).to_be_visible()

    set_field(page, "pretrained_model_name_or_path", paths["model"])
    status = page.locator("#model-family")
    expect(status).to_contain_text("Model: Flux.1 dev (transformer; needs ae, clip_l, t5xxl)")
    expect(status).to_contain_text("ae filled in: ../vae/ae.safetensors")
    for name in ("ae", "clip_l", "t5xxl"):
        expect(field(page, name)).to_have_value(str(paths[name]))
    for hidden in ("v2", "v_parameterization", "vae", "browse-setting-vae"):
        expect(page.locator(f"#setting-{hidden}, #{hidden}").first).to_be_hidden()
    expect(page.locator("#setting-model_type")).to_be_visible()
    open_tab(page, "Parameters", "Basic")
    expect(page.locator("#setting-timestep_sampling")).to_be_visible()
    expect(page.locator("#setting-guidance_scale")).to_be_visible()
    open_tab(page, "Advanced")
    expect(page.locator("#section-flow-matching-transformers")).to_be_visible()
    for other in ("sd3", "anima", "lumina-2"):  # the other transformers' own sections
        expect(page.locator(f"#section-{other}")).to_be_hidden()
    expect(page.locator("#setting-clip_skip")).to_be_hidden()
    expect(page.locator("#setting-t5xxl_max_token_length")).to_be_visible()

    open_tab(page, "Model")
    set_field(page, "pretrained_model_name_or_path", sd1)
    expect(status).to_contain_text("Model: SD1.x (single file)")
    expect(page.locator("#setting-v2")).to_be_visible()
    expect(page.locator("#setting-vae")).to_be_visible()
    for hidden in ("ae", "clip_l", "t5xxl", "model_type"):
        expect(page.locator(f"#setting-{hidden}")).to_be_hidden()
    expect(page.locator("#browse-setting-ae")).to_be_hidden()
    expect(status).to_contain_text("Hidden for SD1.x but set")  # the filled parts are kept, not cleared
    open_tab(page, "Parameters", "Advanced")
    expect(page.locator("#section-flow-matching-transformers")).to_be_hidden()
    expect(page.locator("#setting-clip_skip")).to_be_visible()

    open_tab(page, "Model")  # back to Flux: the parts kept their values while hidden, nothing is filled again
    set_field(page, "pretrained_model_name_or_path", paths["model"])
    expect(status).to_contain_text("Model: Flux.1 dev")
    expect(field(page, "ae")).to_have_value(str(paths["ae"]))
    expect(status).not_to_contain_text("filled in")
