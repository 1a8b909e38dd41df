"""The LoRA tools on Flux.1 / Chroma (tiny BFL-layout models, one tiny trained run shared by the session): inspect
(family from metadata and from module names, fused modules, recipe), resize, merge, extract (tensor by tensor, text
encoders only when given and different), convert to diffusers names and back (and diffusers applying the result),
merge into the transformer file (streamed, prefix and dtype kept), and the comparison grids of a Flux run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import base_settings, built_once, run_cli, write_config
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lora_studio.lora_delta import LoRAStack, read_lora_file
from lora_studio.lora_tools.bake import bake_checkpoint
from lora_studio.lora_tools.convert import convert_lora
from lora_studio.lora_tools.extract import extract_lora
from lora_studio.lora_tools.inspect import inspect_lora
from lora_studio.lora_tools.merge import merge_loras
from lora_studio.lora_tools.resize import resize_lora
from lora_studio.models.family import Components
from lora_studio.models.flux import FluxFamily

PREFIX = "model.diffusion_model."
QKV, LINEAR1 = "double_blocks.0.img_attn.qkv", "single_blocks.1.linear1"


@pytest.fixture(scope="session")
def flux_run(tmp_path_factory):
    """A tiny Flux.1 dev (2 double + 2 single blocks, width 128) and a 4-step LoRA run on it with CLIP-L and T5
    trained (rank 4, alpha 2; a file at step 2 and the final one): 26 transformer, 12 CLIP-L and 14 T5 modules."""
    def build(root: Path) -> dict:
        from lora_studio.demo import write_dataset
        from lora_studio.models.tiny_flux import write_tiny_flux

        parts = write_tiny_flux(root / "model", "dev")
        model = parts.pop("pretrained_model_name_or_path")
        data = write_dataset(root / "data", count=4, repeats=1)
        (root / "prompts.txt").write_text("lsdemo shape --w 64 --h 64 --s 2 --d 3\n", encoding="utf-8")
        settings = base_settings(Path(model), data, root / "out", max_train_steps=4, train_batch_size=1,
                                 save_every_n_steps=2, sample_prompts=str(root / "prompts.txt"),
                                 network_args=["train_t5xxl=True"], **parts)
        run_cli("train", "--config", str(write_config(root / "run.toml", settings)))
        return {"model": model, **parts}

    root, done = built_once(tmp_path_factory, "flux-tools-run", build)
    return {"root": root, "config": root / "run.toml", "file": root / "out" / "test_lora.safetensors",
            "step": root / "out" / "test_lora-step00000002.safetensors", **{k: Path(v) for k, v in done.items()}}


def _change(m, shape) -> torch.Tensor:
    return m.delta(torch.zeros(shape))[0]


def _deltas(path) -> dict[str, torch.Tensor]:
    """Each module's weight change [out, in]."""
    f = read_lora_file(path)
    return {stem: _change(m, (m.tensors["lora_up.weight"].shape[0], m.tensors["lora_down.weight"].shape[1]))
            for stem, m in f.modules.items()}


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b).clamp_min(1e-12))


def _transformer(state: dict):
    from lora_studio.models.flux_net import FluxTransformer, config_from_state_dict

    state = {k.removeprefix(PREFIX): v.float() for k, v in state.items()}
    model = FluxTransformer(config_from_state_dict({k: tuple(v.shape) for k, v in state.items()}))
    model.load_state_dict(state)
    return model.eval()


def _components(model) -> Components:
    """The transformer alone as a model LoRAStack applies files to (the text encoders are not needed)."""
    return Components(FluxFamily(), model, None, [], [], {}, "tiny")


def _forward(model, seed: int = 0) -> torch.Tensor:
    """The tiny transformer's output for fixed random inputs: 16 image tokens (4 x 4 packed), 8 text tokens."""
    from lora_studio.models import flow_matching as fm

    g = torch.Generator().manual_seed(seed)
    config = model.config
    with torch.no_grad():
        return model(img=torch.randn(1, 16, config.in_channels, generator=g), img_ids=fm.image_ids(1, 8, 8, "cpu"),
                     txt=torch.randn(1, 8, config.context_in_dim, generator=g), txt_ids=fm.text_ids(1, 8, "cpu"),
                     timesteps=torch.tensor([0.6]), y=torch.randn(1, config.vec_in_dim, generator=g),
                     guidance=torch.tensor([1.0]))


# ---------------------------------------------------------------- inspect
def test_inspect_names_family_modules_fused_layers_and_recipe(flux_run):
    report = json.loads(run_cli("lora", "inspect", str(flux_run["file"]), "--json").stdout)
    assert report["family"] == "Flux.1 dev" and "ss_base_model_version = flux1" in report["family_from"]
    assert report["modules"] == 52 and report["kinds"] == {"lora": 52} and not report["non_finite"]
    assert {name: b["modules"] for name, b in report["blocks"].items()} == {
        "double_blocks": 20, "single_blocks": 6, "te1": 12, "te3": 14}
    assert {b["rank"][0] for b in report["blocks"].values()} == {4}
    details = report["details"]
    assert details["fused"] == {"qkv": 4, "linear1": 2, "stored_split": 0}
    assert details["double_blocks"] == [0, 1] and details["single_blocks"] == [0, 1]
    assert details["module_types"]["double img_attn_qkv"] == {"modules": 2, "rank": [4], "alpha": [2.0]}
    assert details["module_types"]["single linear1"]["modules"] == 2
    assert details["module_types"]["te3 (T5)"]["modules"] == 14 and details["split_qkv"] is None
    recipe = report["recipe"]
    assert recipe["ss_timestep_sampling"] == "shift" and recipe["ss_guidance_scale"] == 1.0
    assert recipe["ss_model_prediction_type"] == "raw" and recipe["ss_t5xxl_max_token_length"] == 512
    assert report["loads_in"]["AUTOMATIC1111"].startswith("no") and report["loads_in"]["ComfyUI"] == "yes"
    assert "T5" in report["loads_in"]["diffusers"]
    text = run_cli("lora", "inspect", str(flux_run["file"])).stdout
    assert "family: Flux.1 dev" in text and "fused modules: 4 qkv" in text and "timestep_sampling: shift" in text
    assert "clip_skip" not in text  # an SD setting Flux does not read is not shown as a training setting


def test_inspect_tells_flux_variants_from_names_and_metadata(flux_run, tmp_path):
    sd = load_file(str(flux_run["file"]))
    bare = tmp_path / "bare.safetensors"
    save_file(sd, str(bare))  # sd-scripts' names, no metadata: CLIP-L and modulation modules rule Chroma out
    report = inspect_lora(bare)
    assert report["family"] == "Flux.1 dev / Flux.1 schnell" and "module names" in report["family_from"]
    # ComfyUI's names (diffusion_model. + BFL path), only what Chroma has too: any of the three
    family = FluxFamily()
    keys = family.lora_weight_keys("transformer", safe_open(str(flux_run["model"]), "pt").keys())
    comfy = {}
    for key, value in sd.items():
        stem, _, suffix = key.partition(".")
        if stem.startswith("lora_unet_") and not stem.endswith(("_mod_lin", "_modulation_lin")):
            comfy[f"diffusion_model.{family.module_path(keys[stem])}.{suffix}"] = value
    save_file(comfy, str(tmp_path / "comfy.safetensors"))
    report = inspect_lora(tmp_path / "comfy.safetensors")
    assert report["modules"] == 20 and report["family"] == "Chroma / Flux.1 dev / Flux.1 schnell"
    assert report["details"]["fused"]["qkv"] == 4 and not report["unknown_keys"]
    assert report["loads_in"]["diffusers"].startswith("convert it first")
    model = _transformer(load_file(str(flux_run["model"])))
    with LoRAStack(_components(model), [tmp_path / "comfy.safetensors"]) as stack:  # the names apply as they are
        assert stack.report[0]["modules"] == 20 and not stack.report[0]["unmatched"]
    # metadata decides: Chroma's version, schnell's architecture
    chroma = {k: v for k, v in comfy.items()}
    save_file(chroma, str(tmp_path / "chroma.safetensors"), metadata={"ss_base_model_version": "chroma"})
    assert inspect_lora(tmp_path / "chroma.safetensors")["family"] == "Chroma"
    save_file(sd, str(tmp_path / "schnell.safetensors"), metadata={"ss_base_model_version": "flux1",
                                                                   "modelspec.architecture": "flux-1-schnell/lora"})
    assert inspect_lora(tmp_path / "schnell.safetensors")["family"] == "Flux.1 schnell"
    # split_qkv: as network_args say, and a block-diagonal up (q, k, v trained apart) counted as stored split
    stem = "lora_unet_double_blocks_0_img_attn_qkv"
    g = torch.Generator().manual_seed(0)
    split = dict(sd)
    split[f"{stem}.lora_down.weight"] = torch.randn(6, 128, generator=g)
    split[f"{stem}.lora_up.weight"] = torch.block_diag(*[torch.randn(128, 2, generator=g) for _ in range(3)])
    save_file(split, str(tmp_path / "split.safetensors"), metadata={"ss_base_model_version": "flux1",
                                                                    "ss_network_args": '{"split_qkv": "True"}'})
    details = inspect_lora(tmp_path / "split.safetensors")["details"]
    assert details["split_qkv"] is True and details["fused"]["stored_split"] == 1


# ---------------------------------------------------------------- resize, merge
def test_resize_keeps_a_flux_file_and_cuts_to_the_svd_tail(flux_run, tmp_path):
    before = _deltas(flux_run["file"])
    same, _ = resize_lora(flux_run["file"], tmp_path / "same.safetensors", 4, save_precision="float",
                          show_progress=False)
    after = _deltas(same)
    assert after.keys() == before.keys() and len(after) == 52
    assert max(_relative(after[s], d) for s, d in before.items()) <= 1e-5
    half, report = resize_lora(flux_run["file"], tmp_path / "half.safetensors", 2, save_precision="float",
                               show_progress=False)
    after = _deltas(half)
    for r in report:  # rank 2 keeps the two largest singular values: the error is the rest (Eckart-Young)
        s = torch.linalg.svdvals(before[r.stem])
        tail = float(s[2:].square().sum().sqrt() / s.square().sum().sqrt())
        assert r.new_rank == 2 and abs(_relative(after[r.stem], before[r.stem]) - tail) <= 1e-4, r.stem
        assert abs(r.fro_kept - (1 - tail ** 2) ** 0.5) <= 1e-4
    assert inspect_lora(half)["family"] == "Flux.1 dev"


def test_merge_of_two_flux_files_is_the_sum_of_their_changes(flux_run, tmp_path):
    first, second = _deltas(flux_run["step"]), _deltas(flux_run["file"])
    out = merge_loras([flux_run["step"], flux_run["file"]], [0.6, -0.3], tmp_path / "merged.safetensors",
                      save_precision="float", show_progress=False)
    merged = _deltas(out)
    assert merged.keys() == second.keys()
    assert max(_relative(merged[s], 0.6 * first[s] - 0.3 * second[s]) for s in merged) <= 1e-5
    assert {m.rank for m in read_lora_file(out).modules.values()} == {8}  # concat: the ranks add up
    svd = merge_loras([flux_run["step"], flux_run["file"]], [0.6, -0.3], tmp_path / "svd.safetensors", "svd",
                      new_rank=8, save_precision="float", show_progress=False)
    assert max(_relative(d, merged[s]) for s, d in _deltas(svd).items()) <= 1e-4  # rank 8 holds the whole sum
    assert inspect_lora(out)["family"] == "Flux.1 dev"


# ---------------------------------------------------------------- extract
def test_extract_recovers_a_planted_low_rank_change_with_sd_scripts_names(flux_run, tmp_path):
    base = load_file(str(flux_run["model"]))
    g = torch.Generator().manual_seed(0)
    planted = {}
    for path in (QKV, LINEAR1, "single_blocks.0.linear2"):
        rows, columns = base[f"{path}.weight"].shape
        planted[path] = torch.randn(rows, 3, generator=g) @ torch.randn(3, columns, generator=g) * 0.01
    # the tuned file as ComfyUI writes it (model.diffusion_model.), the base without: read through
    tuned = {PREFIX + k: v + planted[k[:-7]] if k[:-7] in planted else v for k, v in base.items()}
    save_file(tuned, str(tmp_path / "tuned.safetensors"))
    t5 = load_file(str(flux_run["t5xxl"]))
    save_file({k: v + 0.05 if k.endswith("SelfAttention.q.weight") else v for k, v in t5.items()},
              str(tmp_path / "t5_tuned.safetensors"))
    text_encoders = {"clip_l": (flux_run["clip_l"], flux_run["clip_l"]),
                     "t5xxl": (flux_run["t5xxl"], tmp_path / "t5_tuned.safetensors")}
    out = extract_lora(flux_run["model"], tmp_path / "tuned.safetensors", tmp_path / "extracted.safetensors", dim=4,
                       clamp_quantile=1.0, text_encoders=text_encoders, show_progress=False)
    deltas = _deltas(out)
    unet = {s: d for s, d in deltas.items() if s.startswith("lora_unet_")}
    assert len(unet) == 26 and not any(s.startswith("lora_te1_") for s in deltas)  # CLIP-L files are the same
    assert sum(s.startswith("lora_te3_") for s in deltas) == 14
    for path, change in planted.items():
        assert _relative(unet.pop("lora_unet_" + path.replace(".", "_")), change) <= 1e-4, path
    assert max(float(d.abs().max()) for d in unet.values()) == 0.0  # nothing else changed
    t5_q = deltas["lora_te3_encoder_block_0_layer_0_SelfAttention_q"]
    assert _relative(t5_q, torch.full_like(t5_q, 0.05)) <= 1e-4
    assert float(deltas["lora_te3_encoder_block_0_layer_0_SelfAttention_k"].abs().max()) == 0.0
    with safe_open(str(out), "pt") as fh:
        meta = fh.metadata()
    assert meta["ss_network_module"] == "networks.lora_flux" and meta["ss_base_model_version"] == "flux1"
    assert meta["modelspec.architecture"] == "flux-1-dev/lora" and json.loads(meta["ss_network_args"]) == {
        "train_t5xxl": "True"}
    assert inspect_lora(out)["family"] == "Flux.1 dev"


# ---------------------------------------------------------------- convert
def test_convert_to_diffusers_and_back_keeps_every_modules_change(flux_run, tmp_path):
    peft = convert_lora(flux_run["file"], tmp_path / "peft.safetensors", flux_run["model"], "diffusers")
    state = load_file(str(peft))
    kohya = read_lora_file(flux_run["file"]).modules
    qkv, linear1 = kohya["lora_unet_" + QKV.replace(".", "_")], kohya["lora_unet_" + LINEAR1.replace(".", "_")]
    for i, part in enumerate(("to_q", "to_k", "to_v")):  # the fused down to every part, the up cut into rows
        prefix = f"transformer.transformer_blocks.0.attn.{part}"
        up = qkv.tensors["lora_up.weight"].float()
        assert torch.equal(state[f"{prefix}.lora_A.weight"], qkv.tensors["lora_down.weight"].float())
        assert torch.equal(state[f"{prefix}.lora_B.weight"], up[i * 128:(i + 1) * 128] * 0.5)  # alpha / rank in B
    mlp = state["transformer.single_transformer_blocks.1.proj_mlp.lora_B.weight"]
    assert torch.equal(mlp, linear1.tensors["lora_up.weight"].float()[3 * 128:] * 0.5) and mlp.shape == (512, 4)
    assert "transformer.transformer_blocks.1.attn.add_v_proj.lora_A.weight" in state
    assert "text_encoder.text_model.encoder.layers.1.mlp.fc2.lora_B.weight" in state
    assert "text_encoder_2.encoder.block.1.layer.1.DenseReluDense.wi_0.lora_A.weight" in state
    assert len(state) == 2 * (52 - 6 + 6 * 3 + 2)  # qkv: 3 parts, linear1: 4
    back = convert_lora(peft, tmp_path / "back.safetensors", flux_run["model"], "kohya")
    before, after = _deltas(flux_run["file"]), _deltas(back)
    assert before.keys() == after.keys()
    for stem, change in before.items():
        if stem.endswith(("_qkv", "_linear1")):  # fused again with one down: exactly the same change, same rank
            assert torch.equal(after[stem], change) and read_lora_file(back).modules[stem].rank == 4, stem
        assert _relative(after[stem], change) <= 1e-6, stem


def test_convert_fuses_split_or_partial_parts_by_stacking_them(flux_run, tmp_path):
    g = torch.Generator().manual_seed(2)
    stem = "lora_unet_" + QKV.replace(".", "_")
    # split_qkv as sd-scripts stores it: q, k, v each rank 2, stacked into rank 6 with alpha x 3
    down, up = torch.randn(6, 128, generator=g), torch.block_diag(*[torch.randn(128, 2, generator=g) for _ in range(3)])
    save_file({f"{stem}.lora_down.weight": down, f"{stem}.lora_up.weight": up, f"{stem}.alpha": torch.tensor(3.0)},
              str(tmp_path / "split.safetensors"))
    peft = convert_lora(tmp_path / "split.safetensors", tmp_path / "split_peft.safetensors", flux_run["model"],
                        "diffusers")
    state = load_file(str(peft))
    assert state["transformer.transformer_blocks.0.attn.to_k.lora_A.weight"].shape == (2, 128)  # each its own
    assert torch.equal(state["transformer.transformer_blocks.0.attn.to_k.lora_A.weight"], down[2:4])
    back = convert_lora(peft, tmp_path / "split_back.safetensors", flux_run["model"], "kohya")
    module = read_lora_file(back).modules[stem]
    assert module.rank == 6 and module.alpha == 6.0  # stacked again: each part's scale 1 (peft) kept
    assert _relative(_deltas(back)[stem], _deltas(tmp_path / "split.safetensors")[stem]) <= 1e-6
    # a diffusers file with only q and v of a block (rank 2 and 3): a fused module with k's rows zero
    q_a, q_b = torch.randn(2, 128, generator=g), torch.randn(128, 2, generator=g)
    v_a, v_b = torch.randn(3, 128, generator=g), torch.randn(128, 3, generator=g)
    part = "transformer.transformer_blocks.0.attn"
    save_file({f"{part}.to_q.lora_A.weight": q_a, f"{part}.to_q.lora_B.weight": q_b,
               f"{part}.to_v.lora_A.weight": v_a, f"{part}.to_v.lora_B.weight": v_b},
              str(tmp_path / "partial.safetensors"))
    fused = _deltas(convert_lora(tmp_path / "partial.safetensors", tmp_path / "partial_kohya.safetensors",
                                 flux_run["model"], "kohya"))[stem]
    assert _relative(fused, torch.cat([q_b @ q_a, torch.zeros(128, 128), v_b @ v_a])) <= 1e-6


def test_diffusers_applies_the_converted_file_as_lora_studio_applies_the_original(tmp_path, monkeypatch):
    from test_flux_net import diffusers_twin, run_diffusers, tiny_inputs, tiny_model

    model = tiny_model("dev")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "flux.safetensors"))
    twin = diffusers_twin("dev", model, monkeypatch)
    g = torch.Generator().manual_seed(3)
    lora = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name.startswith(("double_blocks.", "single_blocks.")):
            stem = "lora_unet_" + name.replace(".", "_")
            lora[f"{stem}.lora_down.weight"] = torch.randn(4, module.in_features, generator=g) * 0.1
            lora[f"{stem}.lora_up.weight"] = torch.randn(module.out_features, 4, generator=g) * 0.1
            lora[f"{stem}.alpha"] = torch.tensor(2.0)
    save_file(lora, str(tmp_path / "kohya.safetensors"))
    peft = convert_lora(tmp_path / "kohya.safetensors", tmp_path / "peft.safetensors", tmp_path / "flux.safetensors",
                        "diffusers")
    twin.load_lora_adapter(load_file(str(peft)), adapter_name="converted", prefix="transformer")
    inputs = tiny_inputs("dev")
    with torch.no_grad():
        plain = model(**inputs)
        with LoRAStack(_components(model), [tmp_path / "kohya.safetensors"]) as stack:
            stack.apply([1.0])
            ours = model(**inputs)
        theirs = run_diffusers("dev", twin, inputs, None)
    assert float((ours - plain).abs().max()) > 1e-2  # the LoRA changes the output
    assert float((ours - theirs).abs().max()) <= 1e-4


# ---------------------------------------------------------------- merge into the transformer file
def test_bake_streams_the_transformer_with_each_change_and_every_other_tensor_as_it_was(flux_run, tmp_path,
                                                                                          monkeypatch):
    import lora_studio.lora_tools.bake as bake_module

    base = {PREFIX + k: v.to(torch.bfloat16) for k, v in load_file(str(flux_run["model"])).items()}
    save_file(base, str(tmp_path / "flux-comfy-bf16.safetensors"))
    monkeypatch.setattr(bake_module, "load_components", None)  # the model is never built
    monkeypatch.setattr(bake_module, "read_safetensors", None)  # nor read whole
    proc = run_cli("lora", "merge", "--model", str(tmp_path / "flux-comfy-bf16.safetensors"), "--lora",
                   str(flux_run["file"]), "--ratio", "0.7", "--out", str(tmp_path / "baked.safetensors"))
    assert "left out 12 CLIP-L" in proc.stdout and "left out 14 T5-XXL" in proc.stdout
    baked = load_file(str(tmp_path / "baked.safetensors"))
    assert list(baked) == list(base) and all(k.startswith(PREFIX) for k in baked)
    assert all(v.dtype == torch.bfloat16 for v in baked.values())
    modules = read_lora_file(flux_run["file"]).modules
    for path in (QKV, LINEAR1):  # W + ratio x delta, computed in float32, in the file's dtype
        weight = base[f"{PREFIX}{path}.weight"].float()
        expected = (weight + 0.7 * _change(modules["lora_unet_" + path.replace(".", "_")], weight.shape))
        assert torch.equal(baked[f"{PREFIX}{path}.weight"], expected.to(torch.bfloat16)), path
    changed = {k for k in base if not torch.equal(base[k], baked[k])}
    trained = {PREFIX + FluxFamily().lora_weight_keys("transformer", [k.removeprefix(PREFIX) for k in base])[s]
               for s in modules if s.startswith("lora_unet_")}
    assert len(trained) == 26 and changed <= trained and len(changed) >= 24  # bf16 may round a tiny change away
    untouched = [k for k in base if k not in trained]
    assert untouched and all(torch.equal(base[k], baked[k]) for k in untouched)


def test_baked_transformer_equals_the_base_with_the_lora_applied(flux_run, tmp_path):
    strong = tmp_path / "strong.safetensors"  # the trained file's change x 50: an output change well above noise
    save_file({k: v.float() * 50 if k.endswith("lora_up.weight") else v.float()
               for k, v in load_file(str(flux_run["file"])).items()}, str(strong))
    out, notes = bake_checkpoint(flux_run["model"], [strong], [0.7], tmp_path / "baked.safetensors",
                                 text_encoders={"clip_l": flux_run["clip_l"], "t5xxl": flux_run["t5xxl"]})
    assert notes == [f"wrote {tmp_path / 'baked-clip_l.safetensors'} (12 clip_l weights changed)",
                     f"wrote {tmp_path / 'baked-t5xxl.safetensors'} (14 t5xxl weights changed)"]
    model = _transformer(load_file(str(flux_run["model"])))
    with LoRAStack(_components(model), [strong]) as stack:
        stack.apply([0.7])
        attached = _forward(model)
    plain = _forward(model)
    baked = _forward(_transformer(load_file(str(out))))
    assert float((attached - plain).abs().max()) > 1e-2
    assert float((baked - attached).abs().max()) <= 1e-5
    clip, clip_baked = load_file(str(flux_run["clip_l"])), load_file(str(tmp_path / "baked-clip_l.safetensors"))
    key = "text_model.encoder.layers.1.self_attn.q_proj.weight"
    module = read_lora_file(strong).modules["lora_te1_text_model_encoder_layers_1_self_attn_q_proj"]
    assert torch.allclose(clip_baked[key], clip[key] + 0.7 * _change(module, clip[key].shape), atol=1e-7)


# ---------------------------------------------------------------- comparison grids
def test_compare_run_renders_a_flux_runs_grid(flux_run, tmp_path):
    import numpy as np
    from PIL import Image

    from lora_studio.compare import compare_run
    from lora_studio.config import load_config

    index = compare_run(load_config(flux_run["config"]), strengths=[0.0, 1.0], out_dir=tmp_path / "grid",
                        show_progress=False)
    assert [r["modules"] for r in index["report"]] == [52, 52] and not index["report"][1]["unmatched"]
    grid = index["grids"][0]
    assert grid["sampler"] == "euler" and (grid["width"], grid["height"]) == (64, 64)
    assert Path(grid["path"]).is_file() and len(grid["tiles"]) == 2
    assert grid["tiles"][0][0] == grid["tiles"][1][0]  # the base model's image, made once
    base, full = (np.asarray(Image.open(p), dtype=float) for p in grid["tiles"][1])
    assert base.shape == (64, 64, 3) and np.abs(base - full).max() >= 1  # the LoRA changes the image


def test_compare_command_takes_the_family_files_with_any_lora(flux_run, tmp_path):
    proc = run_cli("compare", "--files", str(flux_run["file"]), "--model", str(flux_run["model"]),
                   "--ae", str(flux_run["ae"]), "--clip_l", str(flux_run["clip_l"]), "--t5xxl", str(flux_run["t5xxl"]),
                   "--tokenizer_cache_dir", str(flux_run["tokenizer_cache_dir"]), "--prompts",
                   "lsdemo shape --w 64 --h 64 --s 2", "--strengths", "0", "1", "--out", str(tmp_path / "grid"))
    grids = [Path(line) for line in proc.stdout.split()]
    assert len(grids) == 1 and grids[0].is_file()


def test_the_test_tab_renders_a_flux_file_with_its_run_settings(flux_runs, tmp_path):
    """The Test tab's comparison job of a Flux run's file gets the run's ae, clip_l, t5xxl and tokenizer folder
    (from the run's config beside the file), and the job renders."""
    from conftest import run_cli

    from lora_studio.gui.tester import TestSettings, check, compare_options

    root, info = flux_runs
    models = info["models"]["schnell"]
    lora = root / "out-schnell" / "flux_lora.safetensors"
    settings = TestSettings(model=models["pretrained_model_name_or_path"], files=str(lora), prompts="a cat",
                            seeds="1", strengths="0, 1", sampler="euler", steps=2, width=64, height=64,
                            cfg_scale=1.0)
    plan = check(settings, need_files=True)
    assert {plan.family_values[k] for k in ("ae", "clip_l", "t5xxl", "tokenizer_cache_dir")} == \
        {models[k] for k in ("ae", "clip_l", "t5xxl", "tokenizer_cache_dir")}
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(plan.prompts))
    run_cli("compare", *compare_options(plan), "--prompts", str(prompts), "--out", str(tmp_path / "grid"))
    assert list((tmp_path / "grid").rglob("*.png"))
