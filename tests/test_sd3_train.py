"""SD3 / SD3.5 train end to end through ``lora-studio train`` on tiny models written as users have them (the parts in
the checkpoint, or beside it), learn (the held-out loss falls), and write the files sd-scripts writes: its names and
shapes, its metadata, ComfyUI's names; the recipe's numbers (whole timesteps given to the model, sigma = t / 1000,
x0 target, the preconditioning's sign, the latent normalisation once, the timestep densities) and the real-size
module counts."""

import json
import math

import pytest
import torch
from conftest import built_once, run_cli, write_config
from lora_checks import held_out_losses
from safetensors import safe_open
from safetensors.torch import load_file

from lora_studio.config import build_config
from lora_studio.models.loading import load_components
from lora_studio.network.lora import LoRANetwork

NETWORK_ARGS = ["context_attn_dim=2", "x_mod_dim=0", "train_block_indices=1", "emb_dims=[0,2,0,2,0,3]",
                "split_qkv=True"]


def sd3_settings(models: dict, data, out, **extra) -> dict:
    settings = {**models, "train_data_dir": str(data), "output_dir": str(out), "output_name": "sd3_lora",
                "resolution": "64", "train_batch_size": 2, "max_train_steps": 16, "learning_rate": 4e-3,
                "network_dim": 4, "network_alpha": 4.0, "seed": 7, "cache_latents": True, "validation_split": 0.25,
                "validate_every_n_steps": 8}
    settings.update(extra)
    return settings


@pytest.fixture(scope="module")
def sd3_runs(tmp_path_factory):
    """Tiny SD3 medium (everything in the checkpoint), SD3.5 medium (CLIPs inside, T5 beside) and SD3.5 large (VAE
    inside, the text encoders beside); a run on 3.5 large (text encoders trained) and one on 3.5 medium with
    lora_sd3's network_args, cached text-encoder outputs, encoder dropout, sigma_sqrt weighting and the position
    crop."""
    def build(root):
        from lora_studio.demo import write_dataset
        from lora_studio.models.tiny_sd3 import write_tiny_sd3

        layouts = {"medium": "all_in_one", "5-medium": "clips_inside", "5-large": "separate"}
        models = {v: write_tiny_sd3(root / v, v, seed=3, layout=layout) for v, layout in layouts.items()}
        data = write_dataset(root / "data", count=8, repeats=3)
        run_cli("train", "--config", str(write_config(root / "large.toml", sd3_settings(
            models["5-large"], data, root / "out-5-large", max_train_steps=32))))
        run_cli("train", "--config", str(write_config(root / "medium.toml", sd3_settings(
            models["5-medium"], data, root / "out-5-medium", max_train_steps=6, network_args=NETWORK_ARGS,
            network_train_unet_only=True, cache_text_encoder_outputs=True, clip_l_dropout_rate=0.5,
            t5_dropout_rate=0.5, weighting_scheme="sigma_sqrt", pos_emb_random_crop_rate=0.5, training_shift=3.0,
            validation_split=0.0))))
        return {"models": models, "data": str(data)}
    return built_once(tmp_path_factory, "sd3-runs", build)


def test_trains_learns_and_writes_sd_scripts_names_shapes_and_metadata(sd3_runs, tmp_path):
    from lora_studio.demo import write_dataset

    root, info = sd3_runs
    out = root / "out-5-large"
    path = out / "sd3_lora.safetensors"
    tensors = load_file(str(path))
    stems = {k.split(".")[0] for k in tensors}
    unet = sorted(s for s in stems if s.startswith("lora_unet_"))
    # 2 joint blocks: block 0 has 5 + 5 (qkv, proj, fc1, fc2, adaLN each stream), the last has a pre-only context
    # stream (qkv, adaLN) + 5
    assert len(unet) == 17
    assert "lora_unet_joint_blocks_1_context_block_attn_qkv" in unet
    assert "lora_unet_joint_blocks_1_context_block_attn_proj" not in unet
    assert tensors["lora_unet_joint_blocks_0_x_block_attn_qkv.lora_up.weight"].shape == (3 * 128, 4)  # fused
    assert tensors["lora_unet_joint_blocks_0_x_block_adaLN_modulation_1.lora_down.weight"].shape == (4, 128)
    te = sorted(s for s in stems if not s.startswith("lora_unet_"))
    assert {s[:9] for s in te} == {"lora_te1_", "lora_te2_"} and len(te) == 24  # CLIP-L and CLIP-G: 2 layers x 6
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["ss_base_model_version"] == "5-large"
    assert meta["modelspec.architecture"] == "stable-diffusion-3-5-large/lora"
    assert meta["modelspec.implementation"] == "diffusers"
    assert "modelspec.prediction_type" not in meta  # a flow model: sd-scripts' "epsilon" would be false
    assert (meta["ss_apply_lg_attn_mask"], meta["ss_apply_t5_attn_mask"]) == ("False", "False")
    assert (meta["ss_weighting_scheme"], meta["ss_logit_mean"], meta["ss_logit_std"], meta["ss_mode_scale"]) == \
        ("uniform", "0.0", "1.0", "1.29")
    assert (meta["ss_training_shift"], meta["ss_t5xxl_max_token_length"]) == ("1.0", "256")
    events = [json.loads(line) for line in (out / "sd3_lora_events.jsonl").read_text().splitlines()]
    assert [e for e in events if e.get("type") == "validation"]

    cfg = build_config(sd3_settings(info["models"]["5-large"], info["data"], out))
    held_out = write_dataset(tmp_path / "held", count=4, repeats=1, seed=99)
    base, trained = held_out_losses(cfg, path, held_out)
    assert trained < base * 0.97, (base, trained)


def test_lora_sd3_network_args_cached_outputs_and_dropout_run(sd3_runs):
    """context_attn_dim=2, x_mod_dim=0 (none), train_block_indices=1 (block 0 out), emb_dims (t_embedder 2,
    y_embedder 2, final linear 3), split_qkv (block-diagonal up, alpha x 3); with cached outputs the encoder
    dropout zeroes them per step (the run completes)."""
    root, info = sd3_runs
    path = root / "out-5-medium" / "sd3_lora.safetensors"
    tensors = load_file(str(path))
    stems = {k.split(".")[0] for k in tensors}
    assert not any("joint_blocks_0_" in s or "x_block_adaLN" in s for s in stems)
    assert tensors["lora_unet_joint_blocks_1_context_block_attn_qkv.lora_down.weight"].shape == (6, 128)
    up = tensors["lora_unet_joint_blocks_1_context_block_attn_qkv.lora_up.weight"]
    assert up.shape == (384, 6) and not up[:128, 2:].any() and not up[128:256, :2].any()  # q, k, v apart
    # network_alpha 4 per part x 3 parts over rank 6: alpha / rank = 4 / 2, each part's trained strength
    assert float(tensors["lora_unet_joint_blocks_1_context_block_attn_qkv.alpha"]) == 12.0
    assert tensors["lora_unet_joint_blocks_1_x_block_mlp_fc1.lora_down.weight"].shape[0] == 4
    assert {s for s in stems if "embedder" in s or "final_layer" in s} == {
        "lora_unet_t_embedder_mlp_0", "lora_unet_t_embedder_mlp_2", "lora_unet_y_embedder_mlp_0",
        "lora_unet_y_embedder_mlp_2", "lora_unet_final_layer_linear"}
    assert tensors["lora_unet_final_layer_linear.lora_down.weight"].shape[0] == 3
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["ss_base_model_version"] == "5-medium"
    assert meta["modelspec.architecture"] == "stable-diffusion-3-5-medium/lora"
    assert (meta["ss_weighting_scheme"], meta["ss_training_shift"]) == ("sigma_sqrt", "3.0")


def test_names_follow_comfyui_rules_and_real_counts_are_sd_scripts(sd3_runs):
    """ComfyUI (comfy/lora.py model_lora_keys_unet) maps ``lora_unet_`` + a diffusion-model weight's path with "."
    as "_" to that weight of its native MMDiT; CLIP-L ``lora_te1_text_model_encoder_layers_{i}_...``, CLIP-G the same
    with ``lora_te2_`` (SD3 has CLIP-L), T5 ``lora_te3_`` + its path. At real size (meta device) LoRA Studio's network
    has sd-scripts' 237 / 263 / 377 modules."""
    from lora_studio.models.family import Components
    from lora_studio.models.registry import BY_NAME
    from lora_studio.models.sd3_net import CONFIGS, MMDiT

    root, info = sd3_runs
    for out, variant in (("out-5-large", "5-large"), ("out-5-medium", "5-medium")):
        cfg = build_config(info["models"][variant])
        c = load_components(cfg.pretrained_model_name_or_path, None, False, options=cfg)
        comfy = {"lora_unet_" + k[:-len(".weight")].replace(".", "_")
                 for k in c.denoiser.state_dict() if k.endswith(".weight")}
        parts = ("mlp.fc1", "mlp.fc2", "self_attn.k_proj", "self_attn.q_proj", "self_attn.v_proj", "self_attn.out_proj")
        comfy |= {f"lora_te{n}_text_model_encoder_layers_{i}_{p.replace('.', '_')}"
                  for n in (1, 2) for i in range(32) for p in parts}
        comfy |= {"lora_te3_" + k[:-len(".weight")].replace(".", "_") for k in c.text_encoders[2].state_dict()}
        stems = {k.split(".")[0] for k in load_file(str(root / out / "sd3_lora.safetensors"))}
        assert stems and stems <= comfy, sorted(stems - comfy)[:5]
    for name, kind, count in (("sd3-medium", "medium", 237), ("sd3.5-medium", "5-medium", 263),
                              ("sd3.5-large", "5-large", 377)):
        with torch.device("meta"):
            model = MMDiT(CONFIGS[kind])
        network = LoRANetwork(Components(BY_NAME[name], model, None, [], [], {}, "meta"), 1, 1.0,
                              train_text_encoder=False)
        assert len(network.unet_stems) == count, name
        assert all(s.startswith("lora_unet_joint_blocks_") for s in network.unet_stems)


def test_recipe_timesteps_sigma_target_preconditioning_and_latents(sd3_runs):
    """The MMDiT gets whole timesteps 0..1000 (not sigma), x_t = (1 - t/1000) x0 + t/1000 eps, the prediction is
    x_t - sigma * out and the target x0; latents are (z - 0.0609) * 1.5305 once; sigma_sqrt weights sigma^-2."""
    from lora_studio.models.sd3 import sample_timesteps, sampling_sigmas, validation_timesteps
    from lora_studio.training.vae import encode_latents

    root, info = sd3_runs
    cfg = build_config(info["models"]["medium"])
    c = load_components(cfg.pretrained_model_name_or_path, None, False, options=cfg)
    family = c.family
    assert family.name == "sd3-medium" and family.vae_scale_and_shift(c.vae) == pytest.approx((1.5305, 0.0609))
    pixels = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        raw = c.vae.encode(pixels).latent_dist.sample(generator=torch.Generator().manual_seed(0))
        normalised = encode_latents(c.vae, pixels, "cpu", torch.Generator().manual_seed(0),
                                    family.vae_scale_and_shift(c.vae))
    assert torch.allclose(normalised, (raw - 0.0609) * 1.5305, atol=1e-6)
    seen = {}
    handle = c.denoiser.register_forward_pre_hook(lambda m, args, kwargs: seen.update(x=args[0], t=args[1]),
                                                  with_kwargs=True)
    objective = family.objective(c, cfg.replace(weighting_scheme="sigma_sqrt"))
    latents, noise = torch.randn(2, 16, 8, 8), torch.randn(2, 16, 8, 8)
    timesteps = torch.tensor([250.0, 750.0])
    cond = family.encode_prompt(c, ["a cat", "a dog"], "cpu", family.prompt_options(cfg))
    with torch.no_grad():
        pred, target = objective.prediction_and_target(c, latents, noise, timesteps, cond)
        out = c.denoiser(seen["x"], timesteps, y=cond["pooled"], context=cond["context"])
    handle.remove()
    sigma = torch.tensor([0.25, 0.75]).reshape(2, 1, 1, 1)
    assert torch.equal(seen["t"], timesteps)
    assert torch.allclose(seen["x"], (1 - sigma) * latents + sigma * noise)
    assert torch.equal(target, latents) and torch.allclose(pred, seen["x"] - sigma * out, atol=1e-6)
    assert torch.allclose(objective.loss_weights(timesteps, None), torch.tensor([16.0, 1 / 0.5625]))
    assert objective.validation_points == [200.0, 400.0, 600.0, 800.0]
    assert validation_timesteps(100, 600) == [200.0, 300.0, 400.0, 500.0]
    # the timestep draws: whole numbers in [min, max], the densities' means, training_shift's push to noise
    recipe = family.sd3_recipe(cfg)
    g = torch.Generator().manual_seed(0)
    uniform = sample_timesteps(recipe, 20000, g)
    assert torch.equal(uniform, uniform.round()) and 0 <= uniform.min() and uniform.max() <= 999
    assert float(uniform.mean()) == pytest.approx(499.5, abs=6)
    logit = sample_timesteps(family.sd3_recipe(cfg.replace(weighting_scheme="logit_normal", logit_mean=1.0)), 20000, g)
    expected = 1000 * float(torch.sigmoid(1.0 + torch.randn(200000, generator=g)).mean()) - 0.5
    assert float(logit.mean()) == pytest.approx(expected, abs=6)
    mode = sample_timesteps(family.sd3_recipe(cfg.replace(weighting_scheme="mode")), 20000, g)
    u = torch.rand(200000, generator=g)
    expected = float((1 - u - 1.29 * (torch.cos(math.pi * u / 2) ** 2 - 1 + u)).mean()) * 1000 - 0.5
    assert float(mode.mean()) == pytest.approx(expected, abs=6)
    shifted = sample_timesteps(family.sd3_recipe(cfg.replace(training_shift=3.0)), 20000, g)
    u = torch.rand(200000, generator=g)
    assert float(shifted.mean()) == pytest.approx(float((3 * u / (1 + 2 * u)).mean()) * 1000 - 0.5, abs=6)
    ranged = sample_timesteps(family.sd3_recipe(cfg.replace(min_timestep=100, max_timestep=300)), 5000, g)
    assert 100 <= ranged.min() and ranged.max() <= 299
    # sampling: sd-scripts' shift-3 schedule, 1 down to 0
    sigmas = sampling_sigmas(4)
    assert sigmas[0] == 1.0 and sigmas[-1] == 0.0 and len(sigmas) == 5
    lowest = 3 * 0.001 / (1 + 2 * 0.001)  # sigma_min; sd-scripts goes down to timestep(sigma_min), shifted again
    assert sigmas[-2] == pytest.approx(3 * lowest / (1 + 2 * lowest), rel=1e-4)


def test_encoder_dropout_zeroes_each_encoders_part():
    from lora_studio.models.sd3 import SD3Objective, SD3Recipe
    from lora_studio.models.flow_matching import FlowRecipe

    cond = {"context": torch.ones(64, 77 + 10, 64), "pooled": torch.ones(64, 64)}
    torch.manual_seed(0)
    dropped = SD3Objective(SD3Recipe(FlowRecipe(), 1.0), (0.5, 0.0, 1.0), [32, 32]).drop_encoders(cond)
    ctx, pooled = dropped["context"], dropped["pooled"]
    assert not ctx[:, 77:].any()  # T5 at rate 1: every caption's T5 rows
    assert ctx[:, :77, 32:].all() and pooled[:, 32:].all()  # CLIP-G at rate 0: untouched
    off = ~ctx[:, 0, :32].bool().any(-1)
    assert 10 < int(off.sum()) < 54 and torch.equal(off, ~pooled[:, :32].bool().any(-1))  # CLIP-L: about half
    assert cond["context"].all()  # the cached outputs themselves are not changed


def test_render_makes_an_image(sd3_runs):
    from lora_studio.training.prompts import SamplePrompt

    root, info = sd3_runs
    cfg = build_config(info["models"]["5-medium"])
    c = load_components(cfg.pretrained_model_name_or_path, None, False, options=cfg)
    image = c.family.render(c, SamplePrompt("a cat", negative="blurry", width=64, height=48, steps=3), "euler",
                            c.family.prompt_options(cfg), "cpu", torch.float32, seed=1, output_type="np")
    assert image.shape == (48, 64, 3) and 0 <= image.min() and image.max() <= 1
