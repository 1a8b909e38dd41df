"""Flux LoRA files load elsewhere: diffusers' FluxPipeline.load_lora_weights takes every key and gives the same
output as LoRA Studio's own model with the adapters attached (so the strength alpha/rank means is the one trained),
and every name follows ComfyUI's rules for Flux (re-derived here from comfy/lora.py, as for SDXL)."""

import logging

import torch
from safetensors.torch import load_file

from lora_studio.config import build_config
from lora_studio.models.loading import load_components


def _diffusers_twin(model):
    """diffusers' FluxTransformer2DModel with the same weights as LoRA Studio's BFL-layout ``model``."""
    from diffusers import FluxTransformer2DModel

    from lora_studio.models.flux_net import diffusers_to_bfl

    c = model.config
    twin = FluxTransformer2DModel(patch_size=1, in_channels=c.in_channels, num_layers=c.depth,
                                  num_single_layers=c.depth_single_blocks, attention_head_dim=c.head_dim,
                                  num_attention_heads=c.num_heads, joint_attention_dim=c.context_in_dim,
                                  pooled_projection_dim=c.vec_in_dim, guidance_embeds=c.guidance_embed,
                                  axes_dims_rope=tuple(c.axes_dim)).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in twin.parameters():
            p.copy_(torch.randn_like(p) * 0.05)
    model.load_state_dict(diffusers_to_bfl(twin.state_dict(), c))
    return twin


def _converter_at_width(width: int):
    """diffusers' kohya-Flux converter with its real-size single-block split ([3072] x 3 + [12288] rows of
    linear1) written for ``width`` (the tiny model's): the same code with those two numbers replaced."""
    import types

    from diffusers.loaders import lora_conversion_utils as conversion

    sizes = {3072: width, 12288: 4 * width}

    def value(c):
        if isinstance(c, types.CodeType):
            return rewrite(c)
        if isinstance(c, tuple):  # a list of constants is compiled as one tuple constant
            return tuple(value(x) for x in c)
        return sizes.get(c, c) if type(c) is int else c

    def rewrite(code):
        return code.replace(co_consts=tuple(value(c) for c in code.co_consts))
    original = conversion._convert_kohya_flux_lora_to_diffusers
    return types.FunctionType(rewrite(original.__code__), original.__globals__, original.__name__,
                              original.__defaults__, original.__closure__)


def test_diffusers_loads_every_key_with_the_trained_strength(flux_runs, caplog, monkeypatch):
    from diffusers import FluxPipeline
    from diffusers.loaders import lora_pipeline

    from lora_studio.models import flow_matching as fm
    from lora_studio.network.lora import LoRANetwork

    root, info = flux_runs
    cfg = build_config(info["models"]["dev"])
    c = load_components(cfg.pretrained_model_name_or_path, None, False, options=cfg)
    twin = _diffusers_twin(c.denoiser)
    path = root / "out-dev" / "flux_lora.safetensors"
    file = load_file(str(path))
    clip = load_components(cfg.pretrained_model_name_or_path, None, False, options=cfg).text_encoders[0]
    monkeypatch.setattr(lora_pipeline, "_convert_kohya_flux_lora_to_diffusers",
                        _converter_at_width(c.denoiser.config.hidden_size))
    pipe = FluxPipeline(scheduler=None, vae=None, text_encoder=clip, tokenizer=None, text_encoder_2=None,
                        tokenizer_2=None, transformer=twin)
    with caplog.at_level(logging.WARNING):
        pipe.load_lora_weights(str(path))
    assert not [r for r in caplog.records if "unexpected" in r.getMessage().lower() or
                "not loaded" in r.getMessage().lower()], caplog.text
    adapted = {n for n, m in twin.named_modules() if hasattr(m, "lora_A") and m.lora_A}
    # every fused BFL module became LoRAs on its diffusers parts: qkv on to_q/to_k/to_v, linear1 on q/k/v/proj_mlp
    unet_modules = {k.split(".")[0] for k in file if k.startswith("lora_unet_")}
    assert len(adapted) == len(unet_modules) + 2 * 2 * 2 + 2 * 3  # + (q,k,v: 3 - 1) x img/txt x 2 double blocks ...
    # ... + (q, k, v, proj_mlp: 4 - 1) x 2 single blocks
    te_adapted = {n for n, m in clip.named_modules() if hasattr(m, "lora_A") and m.lora_A}
    assert len(te_adapted) == len({k.split(".")[0] for k in file if k.startswith("lora_te1_")})

    g = torch.Generator().manual_seed(1)
    b, h, w = 1, 8, 8
    latents = torch.randn(b, 16, h, w, generator=g)
    txt, y = torch.randn(b, 12, 32, generator=g), torch.randn(b, 32, generator=g)
    sigma, guidance = torch.tensor([0.6]), torch.tensor([1.0])
    img, img_ids, txt_ids = fm.pack_latents(latents), fm.image_ids(b, h, w), fm.text_ids(b, 12)
    with torch.no_grad():
        theirs = twin(hidden_states=img, encoder_hidden_states=txt, pooled_projections=y, timestep=sigma,
                      img_ids=img_ids[0], txt_ids=txt_ids[0], guidance=guidance, return_dict=False)[0]
        network = LoRANetwork(c, 4, 4.0)
        network.load_weights(path)
        network.attach()
        ours = c.denoiser(img=img, img_ids=img_ids, txt=txt, txt_ids=txt_ids, timesteps=sigma, y=y,
                          guidance=guidance)
        network.set_multiplier(0.0)
        base = c.denoiser(img=img, img_ids=img_ids, txt=txt, txt_ids=txt_ids, timesteps=sigma, y=y,
                          guidance=guidance)
    effect = (ours - base).abs().max()
    assert effect > 1e-4  # the LoRA changes the output ...
    assert (theirs - ours).abs().max() < 1e-3 * effect + 1e-5  # ... and diffusers applies exactly that change


def test_names_follow_comfyui_rules_for_flux(flux_runs):
    """ComfyUI (comfy/lora.py model_lora_keys_unet) maps ``lora_unet_`` + a diffusion-model weight's path with "."
    turned into "_" to that weight, for every weight of its native (BFL) Flux; text encoders: CLIP-L as
    ``lora_te1_text_model_encoder_layers_{i}_{self_attn_q_proj | ... | mlp_fc2}``, T5 as ``lora_te3_`` + its path
    (``lora_te2_`` too, for OneTrainer, when CLIP-L is present). Every module of every file maps to a weight."""
    root, info = flux_runs
    for variant in ("dev", "schnell", "chroma"):
        cfg = build_config(info["models"][variant])
        c = load_components(cfg.pretrained_model_name_or_path, None, False, options=cfg)
        comfy = {"lora_unet_" + k[:-len(".weight")].replace(".", "_")
                 for k in c.denoiser.state_dict() if k.endswith(".weight")}
        clip_map = ("mlp.fc1", "mlp.fc2", "self_attn.k_proj", "self_attn.q_proj", "self_attn.v_proj",
                    "self_attn.out_proj")
        comfy |= {f"lora_te1_text_model_encoder_layers_{i}_{part.replace('.', '_')}"
                  for i in range(32) for part in clip_map}
        t5 = c.text_encoders[-1]
        comfy |= {"lora_te3_" + k[:-len(".weight")].replace(".", "_") for k in t5.state_dict() if k.endswith(".weight")}
        stems = {k.split(".")[0] for k in load_file(str(root / f"out-{variant}" / "flux_lora.safetensors"))}
        assert stems and stems <= comfy, sorted(stems - comfy)[:5]
        assert all(k.startswith(("lora_unet_double_blocks_", "lora_unet_single_blocks_", "lora_te1_"))
                   for k in stems)


def test_split_qkv_keeps_the_trained_strength_in_every_loader(flux_runs, tmp_path, caplog, monkeypatch):
    """split_qkv: q, k and v (and a single block's MLP input) train their own rank-r adapters, saved as one rank-3r
    (4r) module with a block-diagonal up and alpha x 3 (x 4), so alpha / rank in the file is each part's trained
    strength: diffusers, which reads it that way, gives the output LoRA Studio trained with (sd-scripts keeps alpha
    and so a loader sees a third of it: its #2204)."""
    from diffusers import FluxPipeline
    from diffusers.loaders import lora_pipeline
    from safetensors.torch import save_file

    from lora_studio.config.network_args import parse_network_args
    from lora_studio.models import flow_matching as fm
    from lora_studio.network.lora import LoRANetwork

    root, info = flux_runs
    cfg = build_config(info["models"]["dev"])
    c = load_components(cfg.pretrained_model_name_or_path, None, False, options=cfg)
    twin = _diffusers_twin(c.denoiser)
    args = parse_network_args(["split_qkv=True"], "networks.lora_flux")
    network = LoRANetwork(c, 2, 1.0, train_text_encoder=False, args=args)
    qkv = network.get_submodule("lora_unet_double_blocks_0_img_attn_qkv")
    linear1 = network.get_submodule("lora_unet_single_blocks_0_linear1")
    assert (qkv.rank, float(qkv.alpha), linear1.rank, float(linear1.alpha)) == (6, 3.0, 8, 4.0)
    torch.manual_seed(5)
    for module in network.adapters():  # as if trained: the up weights only where the masks allow
        up = module.lora_up.weight
        mask = getattr(module, "split_mask", torch.ones_like(up))
        up.data = torch.randn_like(up) * 0.05 * mask
    # the masked gradient keeps the off-diagonal blocks at zero through training
    out = qkv.lora_up(torch.randn(3, 6)).sum()
    out.backward()
    assert float(qkv.lora_up.weight.grad[:128, 2:].abs().max()) == 0.0
    # each part's delta is its own up x down x alpha / r (alpha 1, rank 2)
    part = qkv.lora_up.weight[128:256, 2:4] @ qkv.lora_down.weight[2:4] * 0.5
    assert torch.allclose(qkv.delta_weight()[128:256], part, atol=1e-7)
    path = tmp_path / "split.safetensors"
    save_file({k: v.contiguous() for k, v in network.state_dict().items()}, str(path))

    monkeypatch.setattr(lora_pipeline, "_convert_kohya_flux_lora_to_diffusers",
                        _converter_at_width(c.denoiser.config.hidden_size))
    pipe = FluxPipeline(scheduler=None, vae=None, text_encoder=None, tokenizer=None, text_encoder_2=None,
                        tokenizer_2=None, transformer=twin)
    pipe.load_lora_weights(str(path))
    network.attach()
    g = torch.Generator().manual_seed(2)
    latents, txt, y = torch.randn(1, 16, 8, 8, generator=g), torch.randn(1, 10, 32, generator=g), torch.randn(1, 32)
    img, img_ids, txt_ids = fm.pack_latents(latents), fm.image_ids(1, 8, 8), fm.text_ids(1, 10)
    sigma, guidance = torch.tensor([0.4]), torch.tensor([1.0])
    with torch.no_grad():
        ours = c.denoiser(img=img, img_ids=img_ids, txt=txt, txt_ids=txt_ids, timesteps=sigma, y=y, guidance=guidance)
        network.set_multiplier(0.0)
        base = c.denoiser(img=img, img_ids=img_ids, txt=txt, txt_ids=txt_ids, timesteps=sigma, y=y, guidance=guidance)
        theirs = twin(hidden_states=img, encoder_hidden_states=txt, pooled_projections=y, timestep=sigma,
                      img_ids=img_ids[0], txt_ids=txt_ids[0], guidance=guidance, return_dict=False)[0]
    effect = (ours - base).abs().max()
    assert effect > 1e-4 and (theirs - ours).abs().max() < 1e-3 * effect + 1e-5


def test_a_diffusers_flux_folder_loads_as_the_same_transformer(flux_runs, tmp_path):
    """pretrained_model_name_or_path may be a diffusers Flux folder: its transformer/ (diffusers names, its
    config.json) becomes the same BFL-layout model, and its vae/ and text_encoder/ stand in for ae and clip_l."""
    import json

    root, info = flux_runs
    cfg = build_config(info["models"]["dev"])
    c = load_components(cfg.pretrained_model_name_or_path, None, False, options=cfg)
    twin = _diffusers_twin(c.denoiser)  # our model now holds the twin's weights
    folder = tmp_path / "flux-diffusers"
    twin.save_pretrained(folder / "transformer")
    c.vae.save_pretrained(folder / "vae")
    c.text_encoders[0].save_pretrained(folder / "text_encoder")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline", "transformer": [
        "diffusers", "FluxTransformer2DModel"], "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"]}))
    options = {"t5xxl": cfg.t5xxl, "tokenizer_cache_dir": cfg.tokenizer_cache_dir}
    loaded = load_components(str(folder), None, False, options=options)
    assert loaded.family.name == "flux-dev"
    theirs, ours = loaded.denoiser.state_dict(), c.denoiser.state_dict()
    assert theirs.keys() == ours.keys() and all(torch.equal(theirs[k], ours[k]) for k in ours)
    pixels = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():  # the folder's vae/ is the AE it was saved from
        assert torch.allclose(loaded.vae.encode(pixels).latent_dist.mean, c.vae.encode(pixels).latent_dist.mean,
                              atol=1e-6)
