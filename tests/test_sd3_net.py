"""Our MMDiT (sd3_net) is SD3 / SD3.5's: the same outputs as diffusers' SD3Transformer2DModel loaded through diffusers'
own single-file converter, Stability AI's key names, the real sizes and LoRA module counts on the meta device, the
config read back from shapes, and checkpointing / block swap / the position options changing nothing they should
not."""

import pytest
import torch

from lora_studio.models.sd3_net import CONFIGS, MMDiT, config_from_state_dict, scaled_pos_embed, sincos_2d
from lora_studio.models.tiny_sd3 import VARIANTS, build_tiny_mmdit, tiny_sd3_config


def _randomised(variant):
    model = build_tiny_mmdit(variant, seed=1)
    torch.manual_seed(2)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.05)
    return model


@pytest.mark.parametrize("variant", VARIANTS)
def test_forward_equals_diffusers_through_its_single_file_converter(variant):
    from diffusers import SD3Transformer2DModel
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

    model = _randomised(variant).eval()
    c = model.config
    twin = SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=16, num_layers=c.depth, attention_head_dim=c.head_dim,
        num_attention_heads=c.num_heads, joint_attention_dim=c.context_in_dim, caption_projection_dim=c.hidden_size,
        pooled_projection_dim=c.adm_in_channels, out_channels=16, pos_embed_max_size=c.pos_embed_max_size,
        dual_attention_layers=c.x_block_self_attn_layers, qk_norm="rms_norm" if c.qk_norm else None).eval()
    state = {"model.diffusion_model." + k: v.clone() for k, v in model.state_dict().items()}
    twin.load_state_dict(convert_sd3_transformer_checkpoint_to_diffusers(state), strict=True)
    x, t = torch.randn(2, 16, 8, 12), torch.tensor([100.0, 700.0])  # a non-square latent, timesteps 0..1000
    y, ctx = torch.randn(2, c.adm_in_channels), torch.randn(2, 5, c.context_in_dim)
    with torch.no_grad():
        ours = model(x, t, y=y, context=ctx)
        theirs = twin(hidden_states=x, encoder_hidden_states=ctx, pooled_projections=y, timestep=t).sample
    assert ours.shape == x.shape
    assert (ours - theirs).abs().max() < 1e-5 * ours.abs().max() + 1e-6


def test_real_sizes_names_and_counts_on_the_meta_device():
    """SD3 medium 2.03 B, SD3.5 medium 2.24 B (+ its 384^2-patch position table), SD3.5 large 8.06 B; joint-block
    Linears 237 / 263 / 377 (networks.lora_sd3's module counts); the last context block is pre-only."""
    expected = {"medium": (2.028e9, 237), "5-medium": (2.243e9, 263), "5-large": (8.057e9, 377)}
    for kind, config in CONFIGS.items():
        with torch.device("meta"):
            model = MMDiT(config)
        params = sum(p.numel() for p in model.parameters())
        linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.startswith("joint_")]
        assert params == pytest.approx(expected[kind][0], rel=1e-3) and len(linears) == expected[kind][1], kind
        last = config.depth - 1
        assert f"joint_blocks.{last}.context_block.attn.qkv" in linears
        assert f"joint_blocks.{last}.context_block.attn.proj" not in linears
        assert model.state_dict()["pos_embed"].shape == (1, config.pos_embed_max_size ** 2, config.hidden_size)
        assert config_from_state_dict({"model.diffusion_model." + k: v.shape for k, v in model.state_dict().items()}
                                      ) == config
        assert config.model_type == kind
    with torch.device("meta"):
        medium = MMDiT(CONFIGS["5-medium"])
    assert hasattr(medium.joint_blocks[12].x_block.attn2, "qkv") and medium.joint_blocks[13].x_block.attn2 is None


def test_config_from_a_tiny_checkpoint_with_its_parts_beside():
    model = build_tiny_mmdit("5-medium")
    shapes = {"model.diffusion_model." + k: v.shape for k, v in model.state_dict().items()}
    shapes["text_encoders.clip_l.transformer.text_model.embeddings.token_embedding.weight"] = (49408, 32)
    shapes["first_stage_model.encoder.conv_in.weight"] = (32, 3, 3, 3)
    assert config_from_state_dict(shapes) == tiny_sd3_config("5-medium")


def test_checkpointing_and_block_swap_keep_loss_and_gradients():
    torch.manual_seed(0)
    x, t, y, ctx = torch.randn(1, 16, 8, 8), torch.tensor([500.0]), torch.randn(1, 64), torch.randn(1, 4, 64)

    def loss_and_grad(model):
        inputs = x.clone().requires_grad_(True)
        loss = model(inputs, t, y=y, context=ctx).pow(2).mean()
        loss.backward()
        return float(loss.detach()), inputs.grad.clone()
    plain = _randomised("5-large").requires_grad_(False).train()
    base = loss_and_grad(plain)
    plain.enable_gradient_checkpointing()
    checkpointed = loss_and_grad(plain)
    plain.enable_gradient_checkpointing(cpu_offload=True)
    offloaded = loss_and_grad(plain)
    plain.disable_gradient_checkpointing()
    handle = plain.enable_block_swap(0, "cpu")
    with pytest.raises(Exception, match="too many"):
        plain.swap_plan(1)  # 2 blocks: both stay on the device (sd-scripts: at most all but 2)
    handle.remove()
    for other in (checkpointed, offloaded):
        assert other[0] == pytest.approx(base[0], rel=1e-5) and torch.allclose(other[1], base[1], atol=1e-6)
    with torch.device("meta"):
        large = MMDiT(CONFIGS["5-large"])
    assert large.swap_plan(36) == [(large.joint_blocks, 36)]


def test_position_table_crops_and_scaled_tables():
    """The stored table is cropped at the centre (randomly only in steps with gradients and a crop rate); the scaled
    table of a training size matches sd-scripts' formula: its centre spans 0..16 in steps of 16 / size."""
    model = build_tiny_mmdit("5-medium")  # a 12 x 12 patch table
    side = model.config.pos_embed_max_size
    table = model.pos_embed.reshape(side, side, -1)
    centre = model.position_embedding(4, 6, "cpu", torch.float32)
    assert torch.equal(centre.reshape(4, 6, -1), table[4:8, 3:9])
    model.set_pos_emb_random_crop_rate(1.0)
    torch.manual_seed(0)
    x, t, y, ctx = torch.randn(1, 16, 8, 8), torch.tensor([500.0]), torch.randn(1, 64), torch.randn(1, 4, 64)
    with torch.no_grad():
        fixed = [model(x, t, y=y, context=ctx) for _ in range(2)]
    assert torch.equal(fixed[0], fixed[1])  # no gradients (sampling, validation): the centre
    cropped = [model(x, t, y=y, context=ctx).detach() for _ in range(4)]
    assert any(not torch.equal(c, fixed[0]) for c in cropped)  # training steps crop at random places
    # scaled tables (enable_scaled_pos_embed): a 64 px and a 128 px training size
    scaled = scaled_pos_embed(128, 4)
    positions = (torch.arange(6, dtype=torch.float64) - 1) * 4.0  # grid 6 = 4 x 1.5, centre 4 at 0, 4, 8, 12
    assert torch.allclose(scaled[0], sincos_2d(128, positions, positions).float())
    model.set_pos_emb_random_crop_rate(0.0)
    model.enable_scaled_pos_embed([8, 16])
    assert torch.equal(model.position_embedding(4, 4, "cpu", torch.float32).reshape(4, 4, -1),
                       scaled.reshape(6, 6, -1)[1:5, 1:5])
    assert model.position_embedding(8, 8, "cpu", torch.float32).shape == (1, 64, 128)  # the 16 table
    assert model.position_embedding(20, 4, "cpu", torch.float32).shape == (1, 80, 128)  # grown: too tall for any
    model.enable_scaled_pos_embed(None)
    with pytest.raises(Exception, match="larger than this model's position embedding"):
        model.position_embedding(13, 4, "cpu", torch.float32)
