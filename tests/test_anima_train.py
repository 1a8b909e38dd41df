"""Anima trains end to end through ``lora-studio train`` on tiny files written as users have them (the DiT under
``net.`` with its LLM adapter, Qwen3 as one file, the Qwen-Image VAE in ComfyUI names, a tokenizer_cache_dir),
learns (the held-out loss falls) and writes sd-scripts' names and metadata; the recipe's numbers are sd-scripts'."""

import json
import re

import pytest
import torch
from conftest import built_once, run_cli, write_config
from safetensors import safe_open
from safetensors.torch import load_file

from lora_studio.config import build_config
from lora_studio.errors import UserError
from lora_studio.models.anima import Anima, AnimaPlan
from lora_studio.models.loading import load_components


def _settings(models, data, out, **extra):
    return {**models, "train_data_dir": str(data), "output_dir": str(out), "output_name": "anima_lora",
            "resolution": "64", "train_batch_size": 2, "max_train_steps": 16, "learning_rate": 4e-3, "network_dim": 4,
            "network_alpha": 4.0, "seed": 7, "cache_latents": True, "validation_split": 0.25,
            "validate_every_n_steps": 8, "qwen3_max_token_length": 24, "t5_max_token_length": 24, **extra}


@pytest.fixture(scope="module")
def anima_run(tmp_path_factory):
    def build(root):
        from lora_studio.demo import write_dataset
        from lora_studio.models.tiny_anima import write_tiny_anima

        models = write_tiny_anima(root / "model", "single", seed=3)
        data = write_dataset(root / "data", count=8, repeats=3)
        config = write_config(root / "anima.toml", _settings(models, data, root / "out"))
        run_cli("train", "--config", str(config))
        return {"models": models, "data": str(data)}
    return built_once(tmp_path_factory, "anima-run", build)


def test_trains_learns_and_writes_sd_scripts_names_and_metadata(anima_run):
    root, info = anima_run
    path = root / "out" / "anima_lora.safetensors"
    tensors = load_file(str(path))
    stems = {k.split(".")[0] for k in tensors}
    unet = sorted(s for s in stems if s.startswith("lora_unet_"))
    assert len(unet) == 2 * 10  # 2 tiny blocks x (self / cross q, k, v, output_proj; mlp layer1, layer2)
    assert "lora_unet_blocks_0_self_attn_q_proj" in unet and "lora_unet_blocks_1_mlp_layer2" in unet
    assert not any(re.search(r"modulation|embedder|final_layer|llm_adapter", s) for s in unet)
    te = sorted(s for s in stems if s.startswith("lora_te_"))
    assert len(te) == 2 * 7 and "lora_te_layers_0_self_attn_q_proj" in te and "lora_te_layers_1_mlp_down_proj" in te
    assert tensors["lora_unet_blocks_0_cross_attn_k_proj.lora_down.weight"].shape == (4, 32)
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["ss_base_model_version"] == "anima"
    assert meta["modelspec.architecture"] == "anima-preview/lora"
    assert meta["modelspec.implementation"] == "https://huggingface.co/circlestone-labs/Anima"
    assert "modelspec.prediction_type" not in meta  # sd-scripts' "epsilon" would be wrong for a flow model
    assert (meta["ss_timestep_sampling"], float(meta["ss_discrete_flow_shift"]), float(meta["ss_sigmoid_scale"])) \
        == ("sigmoid", 1.0, 1.0)
    assert meta["ss_weighting_scheme"] == "uniform" and float(meta["ss_mode_scale"]) == pytest.approx(1.29)
    events = [json.loads(line) for line in (root / "out" / "anima_lora_events.jsonl").read_text().splitlines()]
    losses = [e["loss"] for e in events if e.get("type") == "validation"]
    assert len(losses) >= 2 and losses[-1] < losses[0]  # the held-out loss fell


def test_comfyui_naming_rule_reaches_every_trained_module(anima_run):
    """ComfyUI registers lora_unet_{path with . -> _} for every diffusion_model.{path}.weight and lora_te_{path} for
    the Qwen3 layers: re-derived from the model, every written name is one of them."""
    root, info = anima_run
    components = load_components(info["models"]["pretrained_model_name_or_path"], info["models"]["vae"], False,
                                 options=build_config(_settings(info["models"], info["data"], root / "x")))
    comfy = {"lora_unet_" + n.replace(".", "_") for n, m in components.denoiser.named_modules()
             if isinstance(m, torch.nn.Linear)}
    comfy |= {"lora_te_" + n.replace(".", "_") for n, m in components.text_encoders[0].named_modules()
              if isinstance(m, torch.nn.Linear) and n.startswith("layers.")}
    stems = {k.split(".")[0] for k in load_file(str(root / "out" / "anima_lora.safetensors"))}
    assert stems <= comfy
    names = Anima().lora_names(components)
    assert all(s in names for s in stems) and "diffusion_model.blocks.0.self_attn.q_proj" in names


def test_recipe_sigma_target_and_sampler(anima_run):
    root, info = anima_run
    cfg = build_config(_settings(info["models"], info["data"], root / "x"))
    components = load_components(cfg.pretrained_model_name_or_path, cfg.vae, False, options=cfg)
    family = Anima()
    objective = family.objective(components, cfg)
    seen = {}
    forward = components.denoiser.forward

    def spy(x, sigmas, context, **kw):
        seen.update(x=x.clone(), sigmas=sigmas.clone(), padding=kw["padding_mask"].clone())
        return forward(x, sigmas, context, **kw)
    components.denoiser.forward = spy
    latents, noise = torch.randn(2, 16, 4, 4), torch.randn(2, 16, 4, 4)
    sigmas = torch.tensor([0.25, 0.75])
    cond = family.encode_prompt(components, ["a cat", "a dog"], "cpu", family.prompt_options(cfg))
    pred, target = objective.prediction_and_target(components, latents, noise, sigmas, cond)
    assert torch.equal(seen["sigmas"], sigmas)  # the model gets sigma (timesteps / 1000)
    assert seen["x"].shape == (2, 16, 1, 4, 4)  # 5-D
    s = sigmas.view(-1, 1, 1, 1)
    assert torch.allclose(seen["x"][:, :, 0], (1 - s) * latents + s * noise)  # x_t = (1 - sigma) x0 + sigma eps
    assert torch.all(seen["padding"] == 0) and seen["padding"].shape == (2, 1, 4, 4)
    assert torch.equal(target, noise - latents) and pred.shape == latents.shape
    assert objective.loss_weights(sigmas, None).tolist() == [1.0, 1.0]
    cosmap = family.objective(components, cfg.replace(weighting_scheme="sigma_sqrt"))
    cosmap.prediction_and_target(components, latents, noise, sigmas, cond)
    assert torch.allclose(cosmap.loss_weights(sigmas, None), sigmas ** -2.0)
    torch.manual_seed(0)
    draws = objective.sample_timesteps(torch.zeros(4096, 16, 8, 8))
    assert float(draws.mean()) == pytest.approx(0.5, abs=0.01)  # sigmoid(N(0, 1)): symmetric about 0.5
    assert float(draws.std()) == pytest.approx(0.208, abs=0.01)
    components.denoiser.forward = forward
    from lora_studio.training.prompts import SamplePrompt

    image = family.render(components, SamplePrompt("a cat", "", 64, 64, 1, 3, 2.0), "euler",
                          family.prompt_options(cfg), "cpu", torch.float32, 1, output_type="np")
    assert image.shape == (64, 64, 3) and 0.0 <= image.min() and image.max() <= 1.0


def test_network_args_choose_modules(anima_run):
    from lora_studio.models.family import TargetSpec

    root, info = anima_run
    cfg = build_config(_settings(info["models"], info["data"], root / "x"))
    components = load_components(cfg.pretrained_model_name_or_path, cfg.vae, False, options=cfg)
    family = Anima()
    args = (("train_llm_adapter", "true"), ("exclude_patterns", "['.*layer2']"),
            ("include_patterns", "['t_embedder.*']"), ("network_reg_dims", r"blocks\.0\..*=8"))
    stems = {t.stem: t.rank for t in family.adapter_targets(components, True, False, TargetSpec(family_args=args))}
    assert "lora_unet_t_embedder_1_linear_1" in stems  # include_patterns re-includes an excluded module
    assert "lora_unet_blocks_0_mlp_layer2" not in stems and "lora_unet_blocks_0_mlp_layer1" in stems
    assert "lora_unet_llm_adapter_blocks_0_self_attn_q_proj" in stems
    assert "lora_unet_llm_adapter_blocks_0_mlp_0" in stems
    assert stems["lora_unet_blocks_0_self_attn_q_proj"] == 8 and stems["lora_unet_blocks_1_self_attn_q_proj"] is None
    with pytest.raises(UserError, match="include_patterns"):
        family.adapter_targets(components, True, False, TargetSpec(family_args=(("include_patterns", "['(']"),)))

    # network_reg_lrs: the first regex a module's path fullmatches gives its learning rate, in a group of its own
    # (LoRA+ applying to it too), as sd-scripts' lora_anima groups them; the others keep the part's rate
    from lora_studio.config.network_args import parse_network_args
    from lora_studio.network.lora import LoRANetwork

    net_args = parse_network_args([r"network_reg_lrs=blocks\.0\..*=1e-5,.*cross_attn.*=2e-5", "loraplus_lr_ratio=4"],
                                  "networks.lora_anima")
    network = LoRANetwork(components, 4, 4, train_unet=True, train_text_encoder=False, args=net_args)
    groups = {g["name"]: (g["lr"], len(g["params"])) for g in network.param_groups(1e-4, [5e-5])}
    # block 0's 10 modules at 1e-5 (its cross-attention too: the first regex wins), block 1's 4 cross-attention
    # modules at 2e-5, its other 6 at unet_lr; each module's down weight in a group, its up weight in the _plus one
    assert groups == {"unet": (1e-4, 6), "unet_plus": (4e-4, 6), "unet_lr1e-05": (1e-5, 10),
                      "unet_lr1e-05_plus": (4e-5, 10), "unet_lr2e-05": (2e-5, 4), "unet_lr2e-05_plus": (8e-5, 4)}
    with pytest.raises(UserError, match="network_reg_lrs needs regex=lr pairs"):
        AnimaPlan({"network_reg_lrs": "blocks.*"})


def test_caption_dropout_trains_with_cached_text_encoder_outputs(anima_run, tmp_path):
    """Anima alone keeps caption dropout with cached text-encoder outputs (sd-scripts' drop_cached_text_encoder_
    outputs): the run trains, and a dropped caption ("") is looked up as Anima's empty condition (zero Qwen3 states
    and mask, T5 ids and mask [1, 0, ...]) while the others keep their cached entries."""
    from lora_studio.training.te_cache import cached_condition

    root, info = anima_run
    out = tmp_path / "out"
    config = write_config(tmp_path / "run.toml", _settings(
        info["models"], info["data"], out, cache_text_encoder_outputs=True, network_train_unet_only=True,
        caption_dropout_rate=0.5, max_train_steps=4))
    run_cli("train", "--config", str(config))
    assert (out / "anima_lora.safetensors").is_file()
    ones = torch.ones(4, dtype=torch.int64)
    cache = {"a cat": {"qwen3": torch.ones(4, 8), "qwen3_mask": ones, "t5_ids": torch.full((4,), 7), "t5_mask": ones}}
    cond = cached_condition(cache, ["a cat", "", "a cat"], "cpu", Anima().drop_cached_condition)
    assert torch.all(cond["qwen3"][[0, 2]] == 1) and torch.all(cond["qwen3"][1] == 0)
    assert cond["qwen3_mask"][1].tolist() == [0, 0, 0, 0] and cond["t5_ids"][1].tolist() == [1, 0, 0, 0]
    assert cond["t5_mask"][1].tolist() == [1, 0, 0, 0] and cond["t5_ids"][0].tolist() == [7, 7, 7, 7]
    assert torch.all(cache["a cat"]["qwen3"] == 1)  # the cache itself is untouched


def test_lokr_through_lycoris_adapts_the_blocks_attention_and_mlp(anima_run, tmp_path):
    """Kohya_ss v26's LoKr for Anima (lycoris.kohya, preset attn-mlp): the same block Linears as LoRA, LoKr's keys
    under sd-scripts' names, and the Qwen3 layers with the text encoder."""
    root, info = anima_run
    out = tmp_path / "out"
    config = write_config(tmp_path / "run.toml", _settings(
        info["models"], info["data"], out, network_module="lycoris.kohya",
        network_args=["algo=lokr", "preset=attn-mlp", "factor=4"], max_train_steps=2, validation_split=0.0,
        validate_every_n_steps=None))
    run_cli("train", "--config", str(config))
    tensors = load_file(str(out / "anima_lora.safetensors"))
    stems = {k.split(".")[0] for k in tensors}
    unet = sorted(s for s in stems if s.startswith("lora_unet_"))
    assert len(unet) == 2 * 10 and "lora_unet_blocks_1_cross_attn_output_proj" in unet  # as LoRA's 20 modules
    assert "lora_unet_blocks_0_mlp_layer1.lokr_w1" in tensors and any(s.startswith("lora_te_layers_") for s in stems)
    with safe_open(str(out / "anima_lora.safetensors"), "pt") as f:
        assert f.metadata()["ss_network_module"] == "lycoris.kohya"
