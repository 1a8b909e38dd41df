"""The GUI and Flux.1 / Chroma, without a browser: the model's family read from its file (status line), the fields
each family shows, the ae / clip_l / t5xxl files found beside a transformer (confirmed by their headers), and the
Test tab's defaults for a Flux run. The model files are tiny header-true .safetensors files with the real tensor
names (numpy arrays of a few numbers): nothing here loads a model."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from lora_studio.config import build_config
from lora_studio.config import schema as S
from lora_studio.gui.form import check_form
from lora_studio.gui.lora_tab import LoraTab, _field_updates
from lora_studio.gui.model_family import (FAMILY_FIELDS, applies, fill_parts, hidden_but_set, hidden_settings,
                                          read_model)
from lora_studio.gui.tester import TestSettings, check, family_defaults, run_family, settings_from_run
from lora_studio.gui.widgets import widget_specs
from lora_studio.models.registry import BY_NAME as FAMILIES

# Black Forest Labs' transformer names (dev has guidance_in; schnell has not; Chroma has distilled_guidance_layer)
FLUX_DEV = {"double_blocks.0.img_attn.qkv.weight": (12, 4), "single_blocks.0.linear1.weight": (8, 4),
            "img_in.weight": (4, 64), "guidance_in.in_layer.weight": (4, 4)}
FLUX_SCHNELL = {k: v for k, v in FLUX_DEV.items() if not k.startswith("guidance_in")}
CHROMA = {**FLUX_SCHNELL, "distilled_guidance_layer.in_proj.weight": (4, 4)}
# the Flux AE: LDM names without a prefix, 16 latent channels (encoder.conv_out: 2 x 16 = 32 out), no quant_conv
AE = {"encoder.down.0.block.0.conv1.weight": (4, 3, 3, 3), "encoder.conv_out.weight": (32, 4, 3, 3),
      "decoder.conv_out.weight": (3, 4, 3, 3)}
SD_VAE = {**AE, "quant_conv.weight": (32, 32, 1, 1)}  # an SD VAE has quant_conv
CLIP_L = {"text_model.encoder.layers.0.self_attn.q_proj.weight": (4, 4),
          "text_model.embeddings.token_embedding.weight": (10, 4)}
T5 = {"encoder.block.0.layer.0.SelfAttention.q.weight": (4, 4), "shared.weight": (10, 4)}


def write(path: Path, names: dict, metadata: dict | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: np.zeros(shape, np.float16) for k, shape in names.items()}, str(path), metadata=metadata)
    return path


def write_raw(path: Path, names: dict, dtype: str) -> Path:
    """A .safetensors file of a dtype numpy has not (float8 kinds): header and zero bytes written by hand."""
    header, offset = {}, 0
    for name, shape in names.items():
        size = int(np.prod(shape))  # one byte an element
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + bytes(offset))
    return path


def comfyui(root: Path, transformer=FLUX_DEV, unet_folder="unet", text_folder="clip") -> dict[str, Path]:
    """ComfyUI's models/ folders: the transformer in unet/ (or diffusion_models/), ae in vae/, the text encoders
    in clip/ (or text_encoders/), with the other files people keep there."""
    models = root / "models"
    paths = {"model": write(models / unet_folder / "flux1-dev.safetensors", transformer),
             "ae": write(models / "vae" / "ae.safetensors", AE),
             "clip_l": write(models / text_folder / "clip_l.safetensors", CLIP_L),
             "t5xxl": write(models / text_folder / "t5xxl_fp16.safetensors", T5)}
    write(models / "vae" / "sdxl_vae.safetensors", SD_VAE)
    write(models / text_folder / "t5xxl_fp8_e4m3fn.safetensors", T5)
    write(models / text_folder / "clip_g.safetensors", CLIP_L)
    return paths


def fill(model: Path, current: dict | None = None, roots=None):
    family = read_model(str(model), roots=roots).family
    return fill_parts(str(model), family, current or {}, roots)


# ---------------------------------------------------------------- filling in the parts
@pytest.mark.parametrize("unet_folder, text_folder", [("unet", "clip"), ("diffusion_models", "text_encoders")])
def test_a_comfyui_layout_fills_ae_clip_l_and_t5xxl_and_says_from_where(tmp_path, unet_folder, text_folder):
    paths = comfyui(tmp_path, unet_folder=unet_folder, text_folder=text_folder)
    filled = fill(paths["model"])
    assert filled.values == {name: str(paths[name]) for name in ("ae", "clip_l", "t5xxl")}  # fp16 before fp8
    assert filled.notes == ["`ae` filled in: `../vae/ae.safetensors`",
                            f"`clip_l` filled in: `../{text_folder}/clip_l.safetensors`",
                            f"`t5xxl` filled in: `../{text_folder}/t5xxl_fp16.safetensors`"]
    assert filled.missing == []


def test_a_flat_folder_with_all_four_files_fills_from_beside_the_model(tmp_path):
    model = write(tmp_path / "flux" / "flux1-schnell.safetensors", FLUX_SCHNELL)
    for name, names in (("ae", AE), ("clip_l", CLIP_L), ("t5xxl_fp8_e4m3fn", T5)):
        write(tmp_path / "flux" / f"{name}.safetensors", names)
    filled = fill(model)
    assert filled.values == {"ae": str(tmp_path / "flux" / "ae.safetensors"),
                             "clip_l": str(tmp_path / "flux" / "clip_l.safetensors"),
                             "t5xxl": str(tmp_path / "flux" / "t5xxl_fp8_e4m3fn.safetensors")}
    assert filled.notes[0] == "`ae` filled in: `ae.safetensors`"


def test_a_value_the_user_set_is_never_replaced(tmp_path):
    paths = comfyui(tmp_path)
    mine = str(tmp_path / "elsewhere" / "my_t5.safetensors")
    filled = fill(paths["model"], {"t5xxl": mine, "ae": "", "clip_l": None})
    assert set(filled.values) == {"ae", "clip_l"} and "t5xxl" not in filled.values


def test_the_header_decides_not_the_name(tmp_path):
    """A file named like a part but holding another (an SD VAE named ae, a CLIP named t5xxl_fp16, a 'scaled' or an
    e5m2 fp8 T5) is passed over; a part with an unusual name is found by its tensor names."""
    folder = tmp_path / "flat"
    model = write(folder / "flux1-dev.safetensors", FLUX_DEV)
    write(folder / "ae.safetensors", SD_VAE)
    write(folder / "flux-vae-bf16.safetensors", AE)
    write(folder / "t5xxl_fp16.safetensors", CLIP_L)
    write(folder / "t5xxl_fp8_e4m3fn_scaled.safetensors", {**T5, "scaled_fp8": (1,)})
    write_raw(folder / "t5xxl_fp8_e5m2.safetensors", T5, "F8_E5M2")
    filled = fill(model)
    assert filled.values["ae"] == str(folder / "flux-vae-bf16.safetensors")
    assert filled.values["clip_l"] == str(folder / "t5xxl_fp16.safetensors")  # it is a CLIP text encoder
    assert filled.missing == ["t5xxl"]
    write_raw(folder / "t5xxl_fp8_e4m3fn.safetensors", T5, "F8_E4M3")  # float8_e4m3fn is used as it is
    assert fill(model).values["t5xxl"] == str(folder / "t5xxl_fp8_e4m3fn.safetensors")


def test_chroma_gets_ae_and_t5xxl_only_a_diffusers_folder_nothing_and_nothing_outside_the_allowed_folders(tmp_path):
    paths = comfyui(tmp_path, transformer=CHROMA)
    assert set(fill(paths["model"]).values) == {"ae", "t5xxl"}  # Chroma has no CLIP-L
    folder = tmp_path / "diffusers"
    (folder / "transformer").mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    (folder / "transformer" / "config.json").write_text(json.dumps({"guidance_embeds": True}))
    assert fill_parts(str(folder), FAMILIES["flux-dev"], {}).values == {}  # its own vae/, text_encoder*/
    confined = fill(paths["model"], roots=[tmp_path / "models" / "unet", tmp_path / "models" / "clip"])
    assert set(confined.values) == {"t5xxl"} and confined.missing == ["ae"]  # models/vae is not allowed
    assert fill_parts(str(tmp_path / "sd.safetensors"), FAMILIES["sd1"], {}).values == {}


# ---------------------------------------------------------------- the family and its fields
def test_the_status_line_names_the_family_and_what_it_needs(tmp_path, tiny_models):
    for names, line in ((FLUX_DEV, "Model: Flux.1 dev (transformer; needs ae, clip_l, t5xxl)"),
                        (FLUX_SCHNELL, "Model: Flux.1 schnell (transformer; needs ae, clip_l, t5xxl)"),
                        (CHROMA, "Model: Chroma (transformer; needs ae, t5xxl)")):
        reading = read_model(str(write(tmp_path / "model.safetensors", names)))
        assert reading.status == line and reading.problem == ""
    assert read_model(str(tiny_models["single"])).status == "Model: SD1.x (single file)"
    assert read_model(str(tiny_models["folder"])).status == "Model: SD1.x (diffusers folder)"
    assert read_model("") == read_model("  ") == read_model(None)
    assert read_model("").status == "" and read_model("").family is None
    gone = read_model(str(tmp_path / "gone.safetensors"))
    assert gone.family is None and gone.status.startswith("Model: ✗ not found:")
    outside = read_model(str(tiny_models["single"]), roots=[tmp_path])
    assert outside.family is None and "outside the folders allowed" in outside.status
    text = tmp_path / "notes.safetensors"
    text.write_text("not a model")
    assert read_model(str(text)).status.startswith("Model: ✗") and read_model(str(text)).family is None


def test_a_problem_is_said_and_the_fields_still_follow_the_model(tmp_path):
    model = write(tmp_path / "flux1-dev.safetensors", FLUX_DEV)
    reading = read_model(str(model), v2=True)  # v2 set for a Flux model: an error, not fatal here
    assert reading.family is FAMILIES["flux-dev"]
    assert reading.status.startswith("Model: Flux.1 dev (transformer; needs ae, clip_l, t5xxl) · ✗ ")
    assert "remove v2" in reading.status
    assert reading.named_in_problem == ["v2"] and reading.shows(S.BY_NAME["v2"])  # so it can be unticked
    assert not reading.shows(S.BY_NAME["clip_skip"])


def test_each_family_shows_its_own_fields_and_every_field_shows_with_no_model():
    flux, chroma, sd1 = FAMILIES["flux-dev"], FAMILIES["chroma"], FAMILIES["sd1"]
    assert hidden_settings(None) == []
    flux_hidden = set(hidden_settings(flux))
    assert {"v2", "v_parameterization", "clip_skip", "vae", "noise_offset", "min_snr_gamma",
            "weighted_captions"} <= flux_hidden
    others = {s.name for s in S.FLUX_SETTINGS if "flux-dev" not in s.families}  # SD3's, Anima's, Lumina's own
    assert {"clip_g", "qwen3", "gemma2", "training_shift", "system_prompt"} <= others
    assert flux_hidden == set(S.SD_ONLY) | others
    assert not {"ae", "clip_l", "t5xxl", "timestep_sampling", "guidance_scale", "blocks_to_swap"} & flux_hidden
    assert set(hidden_settings(chroma)) == set(S.SD_ONLY) | others | {"clip_l"}  # Chroma has no CLIP-L
    assert set(hidden_settings(sd1)) == {s.name for s in S.FLUX_SETTINGS}
    assert set(hidden_settings(FAMILIES["sdxl"])) == set(hidden_settings(sd1))
    for family in (None, flux, chroma, sd1):  # the settings of every family always show
        assert all(applies(s, family) for s in S.SETTINGS if s.families is None)
    # and the settings a family ignores although they apply elsewhere: SD3's recipe reads no ip_noise_gamma
    assert set(FAMILY_FIELDS) == set(S.SD_ONLY) | {s.name for s in S.FLUX_SETTINGS} | {
        "ip_noise_gamma", "ip_noise_gamma_random_strength"}


def test_hidden_values_are_kept_and_named():
    flux = FAMILIES["flux-dev"]
    values = {"clip_skip": 2, "noise_offset": "0", "v2": False, "min_snr_gamma": "5", "network_dim": 8}
    assert hidden_but_set(flux, values) == [f"{S.BY_NAME['clip_skip'].label} = 2",
                                            f"{S.BY_NAME['min_snr_gamma'].label} = 5"]  # noise offset 0: default
    assert hidden_but_set(FAMILIES["sd1"], {"ae": "/x/ae.safetensors", "guidance_scale": ""}) == \
        [f"{S.BY_NAME['ae'].label} = /x/ae.safetensors"]
    assert hidden_but_set(None, values) == []


def test_the_model_tab_holds_the_flux_files_and_parameters_the_recipe():
    tabs = {spec.name: spec.tab for spec in widget_specs()}
    assert {tabs[n] for n in ("ae", "clip_l", "t5xxl", "model_type", "pretrained_model_name_or_path")} == {"model"}
    assert {tabs[n] for n in ("timestep_sampling", "discrete_flow_shift", "model_prediction_type", "guidance_scale",
                              "blocks_to_swap")} == {"basic"}
    assert {tabs[n] for n in S.ADVANCED_SECTIONS["Flow-matching transformers"]} == {"advanced"}
    placed = [spec.name for spec in widget_specs()]
    assert sorted(placed) == sorted(s.name for s in S.SETTINGS) and len(placed) == len(set(placed))


def _tab(tmp_path) -> LoraTab:
    """The LoRA tab's handlers without a page (the outputs it wires: the status, FAMILY_FIELDS, these buttons and
    sections)."""
    tab = LoraTab(tmp_path / "state", None, None)
    tab.family_buttons, tab.family_sections = ["vae", "ae", "clip_l", "t5xxl", "tokenizer_cache_dir"], ["Flow-matching transformers"]
    return tab


def _form(**values) -> list:
    from lora_studio.gui.form_state import DEFAULTS

    return list({**DEFAULTS, **values}.values())


def test_choosing_a_model_fills_the_parts_and_shows_its_family_fields(tmp_path, tiny_models):
    paths = comfyui(tmp_path)
    tab = _tab(tmp_path)
    status, *updates = tab.model_chosen(True, *_form(pretrained_model_name_or_path=str(paths["model"]),
                                                     clip_skip=2))
    fields = dict(zip(FAMILY_FIELDS, updates))
    buttons = dict(zip(tab.family_buttons, updates[len(FAMILY_FIELDS):]))
    section = updates[-1]
    assert status.startswith("Model: Flux.1 dev (transformer; needs ae, clip_l, t5xxl)")
    assert "`ae` filled in: `../vae/ae.safetensors`" in status and "Clip skip = 2" in status
    assert fields["ae"]["value"] == str(paths["ae"]) and fields["t5xxl"]["value"] == str(paths["t5xxl"])
    assert fields["ae"]["visible"] and fields["timestep_sampling"]["visible"]
    assert not fields["v2"]["visible"] and not fields["clip_skip"]["visible"] and "value" not in fields["clip_skip"]
    assert not buttons["vae"]["visible"] and buttons["ae"]["visible"] and section["visible"]
    # an SD1 model: the opposite, and the filled parts kept (hidden) as they are
    status, *updates = tab.model_chosen(True, *_form(pretrained_model_name_or_path=str(tiny_models["single"]),
                                                     ae=str(paths["ae"])))
    fields = dict(zip(FAMILY_FIELDS, updates))
    assert status.startswith("Model: SD1.x (single file)") and "AE (autoencoder) = " in status
    assert fields["v2"]["visible"] and not fields["ae"]["visible"] and "value" not in fields["ae"]
    assert not updates[-1]["visible"]  # Advanced > Flux
    # no model: every field, no status; v2 / allow_pickle / vae changes never fill
    status, *updates = tab.model_chosen(True, *_form())
    assert status == "" and all(u["visible"] for u in updates)
    status, *updates = tab.model_chosen(False, *_form(pretrained_model_name_or_path=str(paths["model"])))
    assert "filled in" not in status and "value" not in dict(zip(FAMILY_FIELDS, updates))["ae"]


def test_check_settings_names_a_value_set_in_a_hidden_field(tmp_path, dataset):
    paths = comfyui(tmp_path)
    values = {"pretrained_model_name_or_path": str(paths["model"]), "train_data_dir": str(dataset),
              "output_dir": str(tmp_path / "out"), "output_name": "flux", "resolution": "64", "clip_skip": 2}
    values.update({name: str(paths[name]) for name in ("ae", "clip_l", "t5xxl")})
    check = check_form(values)
    assert not check.problems, check.problems
    assert any(w.startswith("clip_skip: has no effect with Flux.1 dev") for w in check.warnings), check.warnings
    check = check_form({**values, "vae": str(tmp_path / "gone.safetensors")})  # a problem in a field Flux hides
    assert "vae" in check.problems
    marks = dict(zip([s.name for s in S.SETTINGS], _field_updates(check.problems)))
    assert marks["vae"]["visible"] is True and "visible" not in marks["clip_skip"]  # shown, so it can be fixed


# ---------------------------------------------------------------- the Test tab
def test_the_test_tab_defaults_follow_the_family():
    expected = {"flux-dev": (20, 1.0, 16, "euler"), "flux-schnell": (4, 1.0, 16, "euler"),
                "chroma": (20, 4.0, 16, "euler"), "sd1": (30, 7.5, 8, None), "sdxl": (30, 7.5, 8, None)}
    for name, values in expected.items():
        d = family_defaults(FAMILIES[name])
        assert (d.steps, d.cfg_scale, d.pixel_multiple, d.sampler) == values, name
    assert family_defaults(None) == family_defaults(FAMILIES["sd1"])


def test_a_flux_run_gives_the_test_tab_its_family_defaults(tmp_path):
    model = write(tmp_path / "flux1-schnell.safetensors", FLUX_SCHNELL)
    cfg = build_config({"pretrained_model_name_or_path": str(model), "resolution": "520", "sample_sampler": "ddim"})
    settings, note = settings_from_run(cfg, str(tmp_path / "lora.safetensors"), TestSettings(strengths="0, 1"))
    assert (settings.steps, settings.cfg_scale, settings.sampler, settings.width, settings.height) == \
        (4, 1.0, "euler", 512, 512)  # 520 rounded down to Flux's 16
    assert note.startswith("512 px, euler,") and settings.strengths == "0, 1"
    # the model is not on this computer: the LoRA file's metadata says what it was trained on
    lora = write(tmp_path / "chroma_lora.safetensors", {"lora_unet_x.lora_down.weight": (2, 4)},
                 {"modelspec.architecture": "chroma/lora"})
    gone = build_config({"pretrained_model_name_or_path": str(tmp_path / "gone.safetensors"), "resolution": "512"})
    assert run_family(gone, lora) is FAMILIES["chroma"] and run_family(gone) is None
    settings, _ = settings_from_run(gone, str(lora), TestSettings())
    assert (settings.steps, settings.cfg_scale, settings.sampler) == (20, 4.0, "euler")
    # Render rounds the tab's sizes to the model's multiple
    plan = check(TestSettings(prompts="a cat", width=520, height=1000), need_files=False, pixel_multiple=16)
    assert "--w 512 --h 992" in plan.prompts[0]
    assert "--w 520 --h 1000" in check(TestSettings(prompts="a cat", width=520, height=1000),
                                       need_files=False).prompts[0]
