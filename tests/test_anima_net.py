"""Our Anima DiT: the file's key names, sd-scripts' LoRA module counts at real size (meta device), the config read
from a header, the padding-mask channel without torchvision, checkpointing and block swap."""

import re

import pytest
import torch

from lora_studio.errors import UserError
from lora_studio.models.anima import DEFAULT_EXCLUDE, TARGET_ROOTS, Anima
from lora_studio.models.anima_net import (ANIMA, TINY_ANIMA, AnimaTransformer, config_from_shapes, resize_nearest,
                                          rope_angles, rope_split)


@pytest.fixture(scope="module")
def real_size():
    with torch.device("meta"):
        return AnimaTransformer(ANIMA)


def test_real_size_has_sd_scripts_280_block_modules_and_60_adapter_modules(real_size):
    linear = [n for n, m in real_size.named_modules() if isinstance(m, torch.nn.Linear)]
    # networks.lora_anima: Linears under Block / PatchEmbed / TimestepEmbedding / FinalLayer, minus the default
    # exclude regex (fullmatch on the dotted path)
    chosen = [n for n in linear if re.fullmatch(TARGET_ROOTS, n) and not re.fullmatch(DEFAULT_EXCLUDE, n)]
    assert len(chosen) == 280
    kinds = {n.split(".", 2)[2] for n in chosen}
    assert kinds == {f"{a}.{p}_proj" for a in ("self_attn", "cross_attn") for p in ("q", "k", "v", "output")} | \
        {"mlp.layer1", "mlp.layer2"}
    adapter = [n for n in linear if re.fullmatch(r"llm_adapter\.blocks\.\d+\..+", n)]
    assert len(adapter) == 60  # 6 blocks x (self q/k/v/o, cross q/k/v/o, mlp.0, mlp.2)
    assert sum(p.numel() for p in real_size.parameters()) == pytest.approx(2.09e9, rel=0.01)
    assert config_from_shapes({"net." + k: tuple(v.shape) for k, v in real_size.state_dict().items()}) == ANIMA


def test_state_dict_is_the_files_key_layout():
    keys = set(AnimaTransformer(TINY_ANIMA).state_dict())
    for key in ("x_embedder.proj.1.weight", "t_embedder.1.linear_1.weight", "t_embedder.1.linear_2.weight",
                "t_embedding_norm.weight", "blocks.0.self_attn.q_proj.weight", "blocks.0.self_attn.q_norm.weight",
                "blocks.1.cross_attn.output_proj.weight", "blocks.0.mlp.layer2.weight",
                "blocks.0.adaln_modulation_mlp.2.weight", "final_layer.adaln_modulation.1.weight",
                "final_layer.linear.weight", "llm_adapter.embed.weight", "llm_adapter.blocks.0.mlp.0.bias",
                "llm_adapter.out_proj.bias", "llm_adapter.norm.weight"):
        assert key in keys
    assert not any("pos_embedder" in k or "inv_freq" in k for k in keys)  # RoPE has no weights
    assert Anima().matches_checkpoint(["net." + k for k in keys])
    assert Anima().matches_checkpoint(["model.diffusion_model." + k for k in keys])
    assert not Anima().matches_checkpoint(["double_blocks.0.img_attn.qkv.weight"])


def test_forward_shapes_rope_and_padding_mask():
    torch.manual_seed(0)
    model = AnimaTransformer(TINY_ANIMA)
    x, sigmas = torch.randn(2, 16, 1, 8, 12), torch.tensor([0.3, 0.9])
    ctx, ids = torch.randn(2, 5, 32), torch.randint(0, 128, (2, 6))
    mask = torch.ones(2, 6, dtype=torch.long)
    out = model(x, sigmas, ctx, t5_ids=ids, t5_mask=mask, qwen3_mask=torch.ones(2, 5, dtype=torch.long))
    assert out.shape == x.shape and out.isfinite().all()
    # the padding mask is resized to the latent size (nearest, as torchvision's resize): a zero mask at another size
    # gives the same output as none
    same = model(x, sigmas, ctx, padding_mask=torch.zeros(2, 1, 64, 96), t5_ids=ids, t5_mask=mask,
                 qwen3_mask=torch.ones(2, 5, dtype=torch.long))
    assert torch.allclose(out, same)
    block = torch.zeros(1, 1, 4, 4)
    block[..., :2, :] = 1
    assert torch.equal(resize_nearest(block, (2, 2)), torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]]))
    assert rope_split(128) == (44, 42, 42)
    angles = rope_angles(ANIMA, 1, 2, 3, "cpu")
    assert angles.shape == (6, 128) and torch.equal(angles[:, :64], angles[:, 64:])
    assert torch.all(angles[:, :22] == 0)  # one frame: the time axis is at position 0


def test_gradient_checkpointing_gives_the_same_gradients_and_block_swap_limits():
    torch.manual_seed(1)
    model = AnimaTransformer(TINY_ANIMA).train()
    x, sigmas, ctx = torch.randn(1, 16, 1, 4, 4, requires_grad=True), torch.tensor([0.5]), torch.randn(1, 3, 32)
    model(x, sigmas, ctx).square().mean().backward()
    plain = x.grad.clone()
    x.grad = None
    model.enable_gradient_checkpointing(cpu_offload=True)
    model(x, sigmas, ctx).square().mean().backward()
    assert torch.allclose(plain, x.grad, atol=1e-6)
    with torch.device("meta"):
        real = AnimaTransformer(ANIMA)
    assert real.swap_plan(26) == [(real.blocks, 26)]
    with pytest.raises(UserError, match="at most 26"):
        real.swap_plan(27)
