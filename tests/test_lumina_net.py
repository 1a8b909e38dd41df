"""Lumina 2's NextDiT (our plain-torch lumina_net) against diffusers' Lumina2Transformer2DModel, its real-size names
and counts (meta device), and the recipe's numbers (no training run)."""

import re

import pytest
import torch

from lora_studio.models.lumina_net import LUMINA_2B, LuminaConfig, LuminaTransformer, config_from_state_dict

TINY = LuminaConfig(dim=48, n_layers=2, n_refiner_layers=1, n_heads=2, n_kv_heads=1, ffn_hidden=64, cap_feat_dim=16,
                    axes_dims=(8, 8, 8))


def _to_diffusers(state: dict, config: LuminaConfig) -> dict:
    """Our native weights in diffusers' Lumina2 names, through the family's own table (diffusers_lora_modules) for
    the Linears; q / k / v cut at the fused qkv's rows."""
    from lora_studio.models.lumina import LuminaFamily

    family, out = LuminaFamily(), {}
    norms = {"attention.q_norm": "attn.norm_q", "attention.k_norm": "attn.norm_k", "attention_norm2": "norm2",
             "ffn_norm1": "ffn_norm1", "ffn_norm2": "ffn_norm2"}
    for key, tensor in state.items():
        path, kind = key.rsplit(".", 1)
        if path == "norm_final":
            continue  # in the file, unused (diffusers drops it too)
        if tensor.ndim == 2:
            start = 0
            for name, rows in family.diffusers_lora_modules(path, *tensor.shape):
                out[f"{name}.{kind}"] = tensor[start:start + rows]
                start += rows
            continue
        match = re.fullmatch(r"((?:layers|noise_refiner|context_refiner)\.\d+)\.(.+)", path)
        if path == "cap_embedder.0":
            out["time_caption_embed.caption_embedder.0.weight"] = tensor
        elif match and match[2] == "attention_norm1":
            out[f"{match[1]}.{'norm1' if path.startswith('context_refiner') else 'norm1.norm'}.weight"] = tensor
        elif match and match[2] in norms:
            out[f"{match[1]}.{norms[match[2]]}.weight"] = tensor
        else:  # a bias of a Linear
            for name, _ in family.diffusers_lora_modules(path, 1, 1):
                out[f"{name}.{kind}"] = tensor
    return out


def _random(model):
    torch.manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.2) if param.ndim == 2 else param.uniform_(0.5, 1.5)
    return model.eval()


def test_forward_matches_diffusers_lumina2_with_padded_captions():
    """The same weights give the same prediction as diffusers' Lumina2Transformer2DModel (which the pipeline calls with
    t = 1 - sigma, as sd-scripts), on a non-square latent and two captions of different lengths; a caption's padding
    changes nothing."""
    from diffusers import Lumina2Transformer2DModel

    ours = _random(LuminaTransformer(TINY))
    theirs = Lumina2Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=16, hidden_size=48, num_layers=2, num_refiner_layers=1,
        num_attention_heads=2, num_kv_heads=1, multiple_of=16, ffn_dim_multiplier=64 / 192, axes_dim_rope=(8, 8, 8),
        axes_lens=(300, 512, 512), cap_feat_dim=16).eval()
    theirs.load_state_dict(_to_diffusers(ours.state_dict(), TINY), strict=True)
    x, cap = torch.randn(2, 16, 8, 12), torch.randn(2, 10, 16)
    mask = torch.zeros(2, 10, dtype=torch.long)
    mask[0], mask[1, :4] = 1, 1
    t = torch.tensor([0.3, 0.8])
    with torch.no_grad():
        out = ours(x, t, cap, mask)
        ref = theirs(hidden_states=x, timestep=t, encoder_hidden_states=cap, encoder_attention_mask=mask.bool(),
                     return_dict=False)[0]
        alone = ours(x[1:], t[1:], cap[1:, :4], mask[1:, :4])
    assert out.shape == x.shape
    assert torch.allclose(out, ref, atol=1e-4), (out - ref).abs().max()
    assert torch.allclose(alone, out[1:], atol=1e-4)


def test_real_size_names_counts_and_config_from_shapes():
    """At real size (meta device): the native keys (GQA qkv 2304 + 768 + 768 rows), the config read back from the
    shapes, 180 LoRA modules as sd-scripts' lora_lumina (26 x 6 + 2 x 6 + 2 x 5 + 2), 182 Gemma2 ones, and the
    per-type dims / train_blocks / embedder_dims / split_qkv network_args."""
    from accelerate import init_empty_weights
    from transformers import Gemma2Config, Gemma2Model

    from lora_studio.config.network_args import parse_network_args
    from lora_studio.models.family import Components
    from lora_studio.models.lumina import LuminaFamily
    from lora_studio.models.lumina_parts import GEMMA2_2B
    from lora_studio.network.lora import LoRANetwork

    with init_empty_weights():
        model = LuminaTransformer(LUMINA_2B)
        gemma = Gemma2Model(Gemma2Config(**GEMMA2_2B))
    shapes = {"model.diffusion_model." + k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["model.diffusion_model.layers.25.attention.qkv.weight"] == (3840, 2304)
    assert shapes["model.diffusion_model.context_refiner.1.attention.out.weight"] == (2304, 2304)
    assert shapes["model.diffusion_model.layers.0.adaLN_modulation.1.weight"] == (4 * 2304, 1024)
    assert "model.diffusion_model.context_refiner.0.adaLN_modulation.1.weight" not in shapes
    assert config_from_state_dict(shapes) == LUMINA_2B
    family = LuminaFamily()
    assert family.matches_checkpoint(shapes) and family.parameter_counts(shapes)["blocks"]["double"][0] == 26
    c = Components(family, model, None, [gemma], [], {}, "meta")

    def stems(args=(), te=False):
        network = LoRANetwork(c, 4, 4.0, train_text_encoder=te,
                              args=parse_network_args(list(args), "networks.lora_lumina") if args else None)
        return network, dict(zip(network.unet_stems, (network.get_submodule(s).rank for s in network.unet_stems)))
    network, ranks = stems(te=True)
    assert len(ranks) == 180 and len(network.te_stems[0]) == 182
    assert {"lora_unet_layers_25_attention_qkv", "lora_unet_noise_refiner_1_adaLN_modulation_1",
            "lora_unet_context_refiner_1_feed_forward_w3", "lora_unet_final_layer_linear",
            "lora_unet_final_layer_adaLN_modulation_1"} <= set(ranks)
    assert "lora_te_layers_25_mlp_down_proj" in network.te_stems[0]
    _, ranks = stems(["attn_dim=8", "mod_dim=0", "embedder_dims=[2,0,3]"])
    assert ranks["lora_unet_layers_0_attention_qkv"] == 8 and ranks["lora_unet_layers_0_feed_forward_w1"] == 4
    assert "lora_unet_layers_0_adaLN_modulation_1" not in ranks
    assert ranks["lora_unet_x_embedder"] == 2 and ranks["lora_unet_cap_embedder_1"] == 3
    assert "lora_unet_t_embedder_mlp_0" not in ranks
    _, ranks = stems(["train_blocks=refiners", "refiner_dim=2"])
    assert len(ranks) == 22 and set(ranks.values()) == {2}
    _, ranks = stems(["train_blocks=transformer", "split_qkv=True"])
    assert len(ranks) == 156 and ranks["lora_unet_layers_3_attention_qkv"] == 12  # 3 parts of rank 4, one module


def test_block_swap_plan_is_sd_scripts():
    """blocks_to_swap: the last N of the main layers only, at most 24 of 26."""
    from accelerate import init_empty_weights

    from lora_studio.errors import UserError

    with init_empty_weights():
        model = LuminaTransformer(LUMINA_2B)
    (blocks, count), = model.swap_plan(24)
    assert blocks is model.layers and count == 24
    with pytest.raises(UserError, match="at most 24"):
        model.swap_plan(25)


def test_recipe_numbers_nextdit_shift_sampling_sigmas_and_guidance():
    """nextdit_shift at 1024 px: u ~ U(0, 1) time-shifted with mu 1.15 (4096 tokens); sampling sigmas equal diffusers'
    FlowMatchEulerDiscreteScheduler(shift=6.0) (sd-scripts' copy); CFG with renorm caps the norm."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from lora_studio.models import flow_matching as fm
    from lora_studio.models.lumina import guided, sampling_sigmas

    recipe = fm.FlowRecipe(timestep_sampling="nextdit_shift", model_prediction_type="raw")
    sigmas = fm.sample_sigmas(recipe, 20000, 128, 128, generator=torch.Generator().manual_seed(0))
    s = torch.e ** 1.15  # time_shift(mu, u) = e^mu u / (1 + (e^mu - 1) u)
    u = torch.linspace(0, 1, 200001)
    expected_mean = float((s * u / (1 + (s - 1) * u)).mean())
    assert float(sigmas.mean()) == pytest.approx(expected_mean, abs=0.005)
    assert float(sigmas.median()) == pytest.approx(s * 0.5 / (1 + (s - 1) * 0.5), abs=0.01)  # 0.7595
    small = fm.sample_sigmas(recipe, 20000, 32, 32, generator=torch.Generator().manual_seed(0))
    assert float(small.median()) == pytest.approx(0.5 * torch.e ** 0.5 / (1 + (torch.e ** 0.5 - 1) * 0.5), abs=0.01)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=6.0)
    scheduler.set_timesteps(36)
    assert sampling_sigmas(36) == pytest.approx(scheduler.sigmas.tolist(), abs=1e-6)
    cond, uncond = torch.ones(1, 4, 2, 2), torch.zeros(1, 4, 2, 2)
    assert torch.allclose(guided(cond, uncond, 3.5, 0.0), torch.full_like(cond, 3.5))
    assert torch.allclose(guided(cond, uncond, 3.5, 1.0), cond)  # capped at the conditional prediction's norm
