"""The LoRA tools on SD2.x and SDXL (tiny models, real layouts): inspect, resize, merge into a checkpoint (read back by
our loader and by diffusers' from_single_file), convert both ways (loaded by diffusers), extract."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from lora_studio.lora_delta import lora_module_table, read_lora_file
from lora_studio.lora_tools.bake import bake
from lora_studio.lora_tools.convert import convert_lora
from lora_studio.lora_tools.extract import extract_lora
from lora_studio.lora_tools.inspect import inspect_lora
from lora_studio.lora_tools.resize import resize_lora
from lora_studio.models.family import TargetSpec
from lora_studio.models.loading import load_components
from lora_studio.network.lora import LoRANetwork
from lora_studio.saving import save_lora

FAMILIES = {"sd2": ("SD2.x", True, "StableDiffusionPipeline"), "sdxl": ("SDXL", False, "StableDiffusionXLPipeline")}


@pytest.fixture(scope="module", params=list(FAMILIES))
def family_files(request, tmp_path_factory):
    """A tiny model as a single file and a diffusers folder, and a LoRA (rank 4, alpha 2, random up and down) for it
    with the metadata our trainer writes."""
    from lora_studio.models import tiny

    key = request.param
    root = tmp_path_factory.mktemp(key)
    if key == "sdxl":
        unet, vae, tes, toks = tiny.build_tiny_sdxl(seed=0)
        folder = tiny.save_sdxl_diffusers_folder(root / "model", unet, vae, tes, toks)
    else:
        unet, vae, tes, toks = tiny.build_tiny_sd2(seed=0)
        folder = tiny.save_diffusers_folder(root / "model", unet, vae, tes, toks)
    single = tiny.save_single_file(root / "model.safetensors", unet, vae, tes)
    v2 = FAMILIES[key][1]
    components = load_components(str(single), None, v2)
    network = LoRANetwork(components, 4, 2.0)
    g = torch.Generator().manual_seed(1)
    state = {k: (torch.randn(v.shape, generator=g) * 0.05 if k.endswith(".weight") else v)
             for k, v in network.state_dict().items()}
    family = components.family
    meta = {"ss_network_module": "networks.lora", "ss_network_dim": 4, "ss_network_alpha": 2.0,
            "ss_base_model_version": family.base_model_version, "ss_v2": v2}
    lora = save_lora(root / "lora.safetensors", state, "float", meta,
                     {"architecture": family.architecture(False)})
    return {"key": key, "root": root, "single": single, "folder": folder, "lora": lora, "v2": v2,
            "components": components}


def _deltas(path) -> dict[str, torch.Tensor]:
    f = read_lora_file(path)
    return {stem: m.delta(torch.zeros(m.delta_numel()))[0] for stem, m in f.modules.items()}


def test_inspect_and_resize(family_files, tmp_path):
    report = inspect_lora(family_files["lora"])
    assert report["family"] == FAMILIES[family_files["key"]][0] and report["type"] == "LoRA"
    assert {r for b in report["blocks"].values() for r in b["rank"]} == {4}
    assert report["loads_in"]["diffusers"] == "yes" and not report["non_finite"]
    if family_files["key"] == "sdxl":
        assert {"te1", "te2"} <= set(report["blocks"])
    same, _ = resize_lora(family_files["lora"], tmp_path / "same.safetensors", 4, save_precision="float",
                          show_progress=False)
    before, after = _deltas(family_files["lora"]), _deltas(same)
    assert before.keys() == after.keys()
    assert all(torch.linalg.norm(after[s] - d) <= 1e-5 * torch.linalg.norm(d) for s, d in before.items())


def test_a_baked_checkpoint_is_base_plus_ratio_times_the_change(family_files, tmp_path):
    import diffusers

    out = bake(family_files["single"], [family_files["lora"]], [0.7], tmp_path / "baked.safetensors",
               v2=family_files["v2"])
    base = lora_module_table(family_files["components"])
    baked_c = load_components(str(out), None, family_files["v2"])
    baked = lora_module_table(baked_c)
    lora = read_lora_file(family_files["lora"])
    assert any(s.startswith("lora_te") for s in lora.modules)  # the text encoders too
    for stem, m in lora.modules.items():
        w0 = base[stem].weight.detach().float()
        change = (m.tensors["lora_up.weight"].flatten(1) @ m.tensors["lora_down.weight"].flatten(1)).reshape(w0.shape)
        assert torch.allclose(baked[stem].weight.detach().float(), w0 + 0.7 * 0.5 * change, atol=1e-6), stem
    base_sd, baked_sd = load_file(str(family_files["single"])), load_file(str(out))
    assert base_sd.keys() == baked_sd.keys()  # every tensor of the base is in the checkpoint
    pipeline = getattr(diffusers, FAMILIES[family_files["key"]][2])
    pipe = pipeline.from_single_file(str(out), config=str(family_files["folder"]), local_files_only=True,
                                     **({"safety_checker": None} if family_files["key"] == "sd2" else {}))
    names = {id(p): n for n, p in baked_c.denoiser.named_parameters()}
    theirs = dict(pipe.unet.named_parameters())
    checked = 0
    for stem in lora.modules:
        if stem.startswith("lora_unet_"):
            name = names[id(baked[stem].weight)]
            assert torch.allclose(theirs[name].float(), baked[stem].weight.float(), atol=1e-6), name
            checked += 1
    assert checked > 10


def test_convert_to_diffusers_and_back(family_files, tmp_path):
    import diffusers

    peft = convert_lora(family_files["lora"], tmp_path / "peft.safetensors", family_files["folder"], "diffusers",
                        family_files["v2"])
    pipeline = getattr(diffusers, FAMILIES[family_files["key"]][2])
    pipe = pipeline.from_pretrained(str(family_files["folder"]), local_files_only=True,
                                    **({"safety_checker": None} if family_files["key"] == "sd2" else {}))
    pipe.load_lora_weights(str(peft), adapter_name="converted")
    parts = [pipe.unet, pipe.text_encoder] + ([pipe.text_encoder_2] if family_files["key"] == "sdxl" else [])
    loaded = [m for part in parts for m in part.modules() if hasattr(m, "lora_A") and "converted" in m.lora_A]
    assert len(loaded) == len(read_lora_file(family_files["lora"]).modules)
    back = convert_lora(peft, tmp_path / "back.safetensors", family_files["single"], "kohya", family_files["v2"])
    before, after = _deltas(family_files["lora"]), _deltas(back)
    assert before.keys() == after.keys()
    assert all(torch.allclose(before[s], after[s], atol=1e-6) for s in before)


def test_extract_recovers_a_planted_change(family_files, tmp_path):
    from lora_studio.models.tiny import save_single_file

    tuned = load_components(str(family_files["single"]), None, family_files["v2"])
    g = torch.Generator().manual_seed(0)
    planted = {}
    for target in tuned.family.adapter_targets(tuned, True, True, TargetSpec()):
        if "attn2_to_v" in target.stem or "mlp_fc1" in target.stem:
            w = target.module.weight
            change = torch.randn(w.shape[0], 2, generator=g) @ torch.randn(2, w.shape[1], generator=g) * 0.05
            with torch.no_grad():
                w += change
            planted[target.stem] = change
    te = tuned.text_encoders if len(tuned.text_encoders) > 1 else tuned.text_encoders[0]
    save_single_file(tmp_path / "tuned.safetensors", tuned.denoiser, tuned.vae, te)
    out = extract_lora(family_files["single"], tmp_path / "tuned.safetensors", tmp_path / "x.safetensors", dim=2,
                       clamp_quantile=1.0, v2=family_files["v2"], show_progress=False)
    got = _deltas(out)
    assert any(s.startswith("lora_te") for s in planted)
    assert all(torch.allclose(got[s].reshape(c.shape), c, atol=1e-5) for s, c in planted.items())
    assert all(float(got[s].abs().max()) < 1e-5 for s in got if s not in planted)
    assert json.loads(read_lora_file(out).metadata["lora_studio_history"])[0]["tool"] == "extract"
