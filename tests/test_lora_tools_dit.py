"""The LoRA tools end to end on SD3 medium, Anima and Lumina 2 (tiny checkpoints in the single-file layouts users
have: SD3 all in one with its text encoders inside, Anima under ``net.``, Lumina 2 under ComfyUI's
``model.diffusion_model.``): extract recovers a planted low-rank change with sd-scripts' names and the family's
metadata (text encoders inside the checkpoint or in their own files), inspect names the family and its blocks,
merge --model bakes base + ratio x change into exactly the adapted weights, and convert --to diffusers works for
Lumina 2 and says clearly why not for SD3 and Anima."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import built_once, run_cli
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lora_studio.lora_delta import read_lora_file
from lora_studio.models.anima import Anima
from lora_studio.models.lumina import LuminaFamily
from lora_studio.models.sd3 import SD3Family

# family -> (the family, the tiny writer's settings key of the text-encoder file the test tunes, or None: inside)
FAMILIES = {"sd3": SD3Family(), "anima": Anima(), "lumina": LuminaFamily()}
# the weights each tuned copy changes (keys as in the checkpoint or the text encoder's file)
PLANTED = {
    "sd3": ["model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight",
            "model.diffusion_model.joint_blocks.1.context_block.attn.qkv.weight",  # the pre-only last context block
            "model.diffusion_model.joint_blocks.0.x_block.mlp.fc2.weight",
            "text_encoders.clip_g.transformer.text_model.encoder.layers.1.self_attn.q_proj.weight"],
    "anima": ["net.blocks.0.self_attn.q_proj.weight", "net.blocks.1.cross_attn.output_proj.weight",
              "net.blocks.1.mlp.layer1.weight"],
    "lumina": ["model.diffusion_model.layers.0.attention.qkv.weight",
               "model.diffusion_model.noise_refiner.1.feed_forward.w2.weight",
               "model.diffusion_model.final_layer.linear.weight"]}
TE_PLANTED = {"anima": ("qwen3", "model.layers.0.self_attn.q_proj.weight"),
              "lumina": ("gemma2", "model.layers.1.mlp.down_proj.weight")}
STEMS = {  # the sd-scripts name of each planted weight
    "model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight": "lora_unet_joint_blocks_0_x_block_attn_qkv",
    "model.diffusion_model.joint_blocks.1.context_block.attn.qkv.weight":
        "lora_unet_joint_blocks_1_context_block_attn_qkv",
    "model.diffusion_model.joint_blocks.0.x_block.mlp.fc2.weight": "lora_unet_joint_blocks_0_x_block_mlp_fc2",
    "text_encoders.clip_g.transformer.text_model.encoder.layers.1.self_attn.q_proj.weight":
        "lora_te2_text_model_encoder_layers_1_self_attn_q_proj",
    "net.blocks.0.self_attn.q_proj.weight": "lora_unet_blocks_0_self_attn_q_proj",
    "net.blocks.1.cross_attn.output_proj.weight": "lora_unet_blocks_1_cross_attn_output_proj",
    "net.blocks.1.mlp.layer1.weight": "lora_unet_blocks_1_mlp_layer1",
    "model.diffusion_model.layers.0.attention.qkv.weight": "lora_unet_layers_0_attention_qkv",
    "model.diffusion_model.noise_refiner.1.feed_forward.w2.weight": "lora_unet_noise_refiner_1_feed_forward_w2",
    "model.diffusion_model.final_layer.linear.weight": "lora_unet_final_layer_linear",
    "model.layers.0.self_attn.q_proj.weight": "lora_te_layers_0_self_attn_q_proj",
    "model.layers.1.mlp.down_proj.weight": "lora_te_layers_1_mlp_down_proj"}
# transformer modules sd-scripts' LoRA trains in each tiny model, and the tuned text encoder's modules
UNET_MODULES = {"sd3": 17, "anima": 20, "lumina": 36}
TE_MODULES = {"sd3": ("lora_te2_", 12), "anima": ("lora_te_", 14), "lumina": ("lora_te_", 14)}


def _low_rank(shape, g) -> torch.Tensor:
    return torch.randn(shape[0], 2, generator=g) @ torch.randn(2, shape[1], generator=g) * 0.05


def _tuned_copy(source: Path, target: Path, keys: list[str], g) -> dict[str, torch.Tensor]:
    """``source`` with a rank-2 change on ``keys``, written in its own layout (names, order, metadata); the
    changes."""
    state = load_file(str(source))
    with safe_open(str(source), "pt") as fh:
        metadata = fh.metadata()
    changes = {k: _low_rank(state[k].shape, g) for k in keys}
    save_file({k: v + changes[k] if k in changes else v for k, v in state.items()}, str(target), metadata=metadata)
    return changes


@pytest.fixture(scope="session")
def dit_models(tmp_path_factory):
    """The three tiny checkpoints, their tuned copies (and tuned Qwen3 / Gemma2 files) and the planted changes."""
    def build(root: Path) -> dict:
        from lora_studio.models.tiny_anima import write_tiny_anima
        from lora_studio.models.tiny_lumina import write_tiny_lumina
        from lora_studio.models.tiny_sd3 import write_tiny_sd3

        settings = {"sd3": write_tiny_sd3(root / "sd3", "medium"), "anima": write_tiny_anima(root / "anima"),
                    "lumina": write_tiny_lumina(root / "lumina", comfy_prefix=True)}
        g = torch.Generator().manual_seed(0)
        done = {}
        for key, parts in settings.items():
            model = Path(parts["pretrained_model_name_or_path"])
            changes = _tuned_copy(model, root / f"{key}-tuned.safetensors", PLANTED[key], g)
            info = {"model": str(model), "tuned": str(root / f"{key}-tuned.safetensors"), **parts}
            if key in TE_PLANTED:
                part, te_key = TE_PLANTED[key]
                changes.update(_tuned_copy(Path(parts[part]), root / f"{key}-{part}-tuned.safetensors", [te_key], g))
                info[f"{part}_tuned"] = str(root / f"{key}-{part}-tuned.safetensors")
            save_file(changes, str(root / f"{key}-changes.safetensors"))
            info["changes"] = str(root / f"{key}-changes.safetensors")
            done[key] = info
        return done

    _, done = built_once(tmp_path_factory, "dit-lora-tools", build)
    return done


@pytest.fixture(scope="module", params=list(FAMILIES))
def extracted(request, dit_models, tmp_path_factory):
    """``lora extract`` (rank 4, no clamping) of the family's tuned copy, with Anima's / Lumina's tuned text-encoder
    file given; SD3's text encoders are inside its checkpoint."""
    key = request.param
    files = dit_models[key]
    out = tmp_path_factory.mktemp(f"{key}-extract") / f"{key}-extracted.safetensors"
    te = []
    if key in TE_PLANTED:
        part = TE_PLANTED[key][0]
        te = [f"--{part}", files[part], f"--{part}_tuned", files[f"{part}_tuned"]]
    run_cli("lora", "extract", "--model", files["model"], "--tuned", files["tuned"], "--out", str(out), "--dim", "4",
            "--clamp_quantile", "1", *te)
    return {"key": key, "family": FAMILIES[key], "out": out, **files}


def _deltas(path) -> dict[str, torch.Tensor]:
    f = read_lora_file(path)
    return {stem: m.delta(torch.zeros(m.delta_numel()))[0] for stem, m in f.modules.items()}


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b).clamp_min(1e-12))


# ---------------------------------------------------------------- extract
def test_extract_recovers_the_planted_change_with_sd_scripts_names_and_the_familys_metadata(extracted):
    key, family = extracted["key"], extracted["family"]
    deltas = _deltas(extracted["out"])
    changes = load_file(extracted["changes"])
    unet = {s: d for s, d in deltas.items() if s.startswith("lora_unet_")}
    prefix, count = TE_MODULES[key]
    te = {s: d for s, d in deltas.items() if not s.startswith("lora_unet_")}
    assert len(unet) == UNET_MODULES[key] and len(te) == count and all(s.startswith(prefix) for s in te)
    if key == "sd3":  # CLIP-L and T5 inside the checkpoint are the base's: left out (min_diff)
        assert not any(s.startswith(("lora_te1_", "lora_te3_")) for s in deltas)
    for weight, change in changes.items():
        stem = STEMS[weight]
        assert _relative(deltas[stem].reshape(change.shape), change) <= 1e-4, stem
    rest = [d for s, d in deltas.items() if s not in {STEMS[w] for w in changes}]
    assert rest and max(float(d.abs().max()) for d in rest) <= 1e-6  # nothing else changed
    with safe_open(str(extracted["out"]), "pt") as fh:
        meta = fh.metadata()
    assert meta["ss_base_model_version"] == family.base_model_version
    assert meta["modelspec.architecture"] == family.architecture(False)
    assert meta["ss_network_module"] == family.lora_module == {"sd3": "networks.lora_sd3", "anima":
                                                               "networks.lora_anima",
                                                               "lumina": "networks.lora_lumina"}[key]
    assert json.loads(meta["ss_network_args"]) == {}  # no T5 trained (SD3's train_t5xxl only with lora_te3_)


def test_extract_refuses_a_text_encoder_file_the_family_does_not_have(dit_models, tmp_path):
    files = dit_models["anima"]
    proc = run_cli("lora", "extract", "--model", files["model"], "--tuned", files["tuned"], "--out",
                   str(tmp_path / "x.safetensors"), "--gemma2", files["qwen3"], "--gemma2_tuned", files["qwen3"],
                   check=False)
    assert proc.returncode != 0 and "Anima has no gemma2 text encoder" in proc.stderr


# ---------------------------------------------------------------- inspect
def test_inspect_names_the_family_its_blocks_module_types_and_apps(extracted, tmp_path):
    key, family = extracted["key"], extracted["family"]
    report = json.loads(run_cli("lora", "inspect", str(extracted["out"]), "--json").stdout)
    assert report["family"] == family.title and report["type"] == "LoRA"
    assert f"ss_base_model_version = {family.base_model_version}" in report["family_from"]
    blocks = {name: b["modules"] for name, b in report["blocks"].items()}
    assert blocks == {"sd3": {"joint_blocks": 17, "te2": 12}, "anima": {"blocks": 20, "te": 14},
                      "lumina": {"layers": 12, "noise_refiner": 12, "context_refiner": 10, "unet (other)": 2,
                                 "te": 14}}[key]
    types = report["details"]["module_types"]
    expected = {"sd3": ("joint_blocks x_block_attn_qkv", "te2 (clip_g)"),
                "anima": ("blocks self_attn_q_proj", "te (qwen3)"),
                "lumina": ("layers attention_qkv", "te (gemma2)")}[key]
    assert types[expected[0]]["modules"] == 2 and types[expected[1]]["modules"] == TE_MODULES[key][1]
    assert report["details"]["blocks"][family.main_blocks] == [0, 1]
    if key == "lumina":
        assert report["details"]["fused"] == {"qkv": 6, "stored_split": 0}
    assert report["loads_in"] == family.lora_apps(list(read_lora_file(extracted["out"]).modules), True)
    assert report["loads_in"]["ComfyUI"].startswith("yes") and report["loads_in"]["AUTOMATIC1111"].startswith("no")
    assert report["loads_in"]["diffusers"].startswith({"sd3": "no:", "anima": "convert it first",
                                                       "lumina": "convert it first"}[key])
    text = run_cli("lora", "inspect", str(extracted["out"])).stdout
    assert f"family: {family.title}" in text and f"{family.main_blocks} changed: 0-1" in text
    assert f"network_module: {family.lora_module}" in text
    # no metadata: the module names fit this family alone (SD3's variants share them without attn2)
    bare = tmp_path / "bare.safetensors"
    save_file(load_file(str(extracted["out"])), str(bare))
    report = json.loads(run_cli("lora", "inspect", str(bare), "--json").stdout)
    assert report["family"] == {"sd3": "SD3 medium / SD3.5 medium / SD3.5 large", "anima": "Anima",
                                "lumina": "Lumina 2"}[key]
    assert "module names" in report["family_from"]


# ---------------------------------------------------------------- merge into the checkpoint
def test_merge_into_the_checkpoint_changes_exactly_the_adapted_weights_in_its_own_layout(extracted, tmp_path):
    key, family = extracted["key"], extracted["family"]
    out = tmp_path / f"{key}-baked.safetensors"
    args = ["lora", "merge", "--model", extracted["model"], "--lora", str(extracted["out"]), "--ratio", "0.7",
            "--out", str(out)]
    if key == "lumina":  # Gemma2's modules left out without its file, and named
        proc = run_cli(*args)
        assert "left out 14 Gemma2 text encoder (gemma_2_2b_fp16.safetensors) modules (lora_te_): give --gemma2" \
            in proc.stdout
    elif key == "anima":
        run_cli(*args, "--qwen3", extracted["qwen3"])
    else:
        run_cli(*args)
    base, baked = load_file(extracted["model"]), load_file(str(out))
    assert list(baked) == list(base)  # every tensor, in the file's order, with its prefix
    assert all(k.startswith({"sd3": ("model.diffusion_model.", "text_encoders.", "first_stage_model."),
                             "anima": ("net.",), "lumina": ("model.diffusion_model.",)}[key]) for k in baked)
    modules = read_lora_file(extracted["out"]).modules
    table = family.lora_weight_keys("transformer", list(base))
    adapted = {table[s] for s in modules if s in table}
    assert len(adapted) == UNET_MODULES[key] + (12 if key == "sd3" else 0)  # SD3: CLIP-G inside the checkpoint
    for weight in adapted:
        module = modules[next(s for s in modules if table.get(s) == weight)]
        expected = base[weight] + 0.7 * module.delta(base[weight])[0]
        assert torch.allclose(baked[weight], expected, atol=1e-6), weight
    changes = load_file(extracted["changes"])
    for weight in (w for w in changes if w in base):  # base + 0.7 x the planted change
        assert _relative(baked[weight] - base[weight], 0.7 * changes[weight]) <= 1e-4, weight
    assert all(torch.equal(baked[k], base[k]) for k in base if k not in adapted)
    if key == "anima":  # Qwen3's modules into a copy of its file
        qwen, qwen_baked = load_file(extracted["qwen3"]), load_file(str(tmp_path / f"{key}-baked-qwen3.safetensors"))
        part, te_key = TE_PLANTED[key]
        assert list(qwen_baked) == list(qwen)
        assert _relative(qwen_baked[te_key] - qwen[te_key], 0.7 * changes[te_key]) <= 1e-4
        others = [k for k in qwen if not k.endswith("_proj.weight")]
        assert others and all(torch.equal(qwen_baked[k], qwen[k]) for k in others)


# ---------------------------------------------------------------- convert
def test_convert_to_diffusers_is_lumina_only_and_says_why_for_sd3_and_anima(extracted, tmp_path):
    key, family = extracted["key"], extracted["family"]
    peft = tmp_path / "peft.safetensors"
    proc = run_cli("lora", "convert", str(extracted["out"]), str(peft), "--to", "diffusers", "--model",
                   extracted["model"], check=False)
    if key != "lumina":
        assert proc.returncode == 2 and not peft.exists()
        assert f"lora convert has no diffusers names for {family.title}" in proc.stderr
        assert family.lora_apps(list(read_lora_file(extracted["out"]).modules), True)["diffusers"] in proc.stderr
        assert "Traceback" not in proc.stderr
        return
    assert proc.returncode == 0, proc.stderr
    state = load_file(str(peft))
    assert "text_encoder.layers.1.mlp.down_proj.lora_A.weight" in state  # Gemma2: the pipeline's text_encoder
    assert "transformer.layers.0.attn.to_q.lora_A.weight" in state  # the fused qkv in its three parts
    back = tmp_path / "back.safetensors"
    run_cli("lora", "convert", str(peft), str(back), "--to", "kohya", "--model", extracted["model"])
    before, after = _deltas(extracted["out"]), _deltas(back)
    assert before.keys() == after.keys()
    assert all(float((after[s] - d).abs().max()) <= 1e-6 for s, d in before.items())


def test_sd3_text_encoder_modules_go_to_their_own_files_when_given(dit_models, tmp_path):
    """SD3 with its text encoders beside the checkpoint (clip_l / clip_g / t5xxl files): extract with --clip_g
    recovers a CLIP-G change, and merge --model bakes lora_te2_ into a copy of the clip_g file (left out and named
    without it); an all-in-one checkpoint given --clip_g bakes into that file, its own CLIP-G kept."""
    from lora_studio.models.tiny_sd3 import write_tiny_sd3

    parts = write_tiny_sd3(tmp_path / "separate", "medium", layout="separate")
    model, clip_g = parts["pretrained_model_name_or_path"], parts["clip_g"]
    te_key = "text_model.encoder.layers.0.mlp.fc1.weight"
    changes = _tuned_copy(Path(clip_g), tmp_path / "clip_g_tuned.safetensors", [te_key],
                          torch.Generator().manual_seed(5))
    out = tmp_path / "x.safetensors"
    run_cli("lora", "extract", "--model", model, "--tuned", model, "--out", str(out), "--dim", "2", "--clamp_quantile",
            "1", "--clip_g", clip_g, "--clip_g_tuned", str(tmp_path / "clip_g_tuned.safetensors"), "--clip_l",
            parts["clip_l"], "--clip_l_tuned", parts["clip_l"])
    deltas = _deltas(out)
    te = {s for s in deltas if not s.startswith("lora_unet_")}
    assert len(te) == 12 and all(s.startswith("lora_te2_") for s in te)  # CLIP-L's files are the same: left out
    assert _relative(deltas["lora_te2_text_model_encoder_layers_0_mlp_fc1"].reshape(64, 32), changes[te_key]) <= 1e-4
    proc = run_cli("lora", "merge", "--model", model, "--lora", str(out), "--out", str(tmp_path / "a.safetensors"))
    assert "left out 12 CLIP-G text encoder (clip_g.safetensors) modules (lora_te2_): give --clip_g" in proc.stdout
    run_cli("lora", "merge", "--model", model, "--lora", str(out), "--ratio", "0.5", "--clip_g", clip_g, "--out",
            str(tmp_path / "b.safetensors"))
    base, baked = load_file(clip_g), load_file(str(tmp_path / "b-clip_g.safetensors"))
    assert list(baked) == list(base)
    assert _relative(baked[te_key] - base[te_key], 0.5 * changes[te_key]) <= 1e-4
    # all in one, --clip_g given: the file given is changed, the checkpoint's CLIP-G is not
    whole = dit_models["sd3"]["model"]
    run_cli("lora", "merge", "--model", whole, "--lora", str(out), "--ratio", "0.5", "--clip_g", clip_g, "--out",
            str(tmp_path / "c.safetensors"))
    assert torch.equal(load_file(str(tmp_path / "c-clip_g.safetensors"))[te_key], baked[te_key])
    inside, inside_baked = load_file(whole), load_file(str(tmp_path / "c.safetensors"))
    assert all(torch.equal(inside_baked[k], v) for k, v in inside.items() if k.startswith("text_encoders."))
