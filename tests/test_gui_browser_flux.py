"""Flux.1 in a real browser: choosing a Flux transformer says what it is, fills in the ae / clip_l / t5xxl files found
beside it and shows the Flux fields instead of the Stable Diffusion ones; choosing an SD1 model does the opposite."""

from __future__ import annotations

import shutil

import pytest
from playwright.sync_api import expect

from conftest import cli_path
from gui_helpers import field, gui_page, open_tab, set_field
from test_gui_flux import comfyui

pytestmark = pytest.mark.timeout(600)


def test_the_form_follows_the_models_family(tmp_path, tiny_models):
    paths = comfyui(tmp_path)
    sd1 = shutil.copy(tiny_models["single"], tmp_path / "tiny-sd1.safetensors")
    with gui_page(cli_path(), tmp_path) as (page, _proc):
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
        expect(page.locator("#section-flux")).to_be_visible()
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
        expect(page.locator("#section-flux")).to_be_hidden()
        expect(page.locator("#setting-clip_skip")).to_be_visible()

        open_tab(page, "Model")  # back to Flux: the parts kept their values while hidden, nothing is filled again
        set_field(page, "pretrained_model_name_or_path", paths["model"])
        expect(status).to_contain_text("Model: Flux.1 dev")
        expect(field(page, "ae")).to_have_value(str(paths["ae"]))
        expect(status).not_to_contain_text("filled in")
