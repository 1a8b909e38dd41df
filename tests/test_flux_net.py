"""Flux.1 / Chroma denoisers in the BFL layout (``lora_studio.models.flux_net``) and block swap (``block_swap``):
equal to diffusers' models on tiny random weights, BFL key names and real sizes on the meta device, the
diffusers -> BFL converter, and gradient checkpointing / CPU-offloaded checkpointing / block swap changing nothing."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from lora_studio.errors import UserError
from lora_studio.models.block_swap import swap_blocks
from lora_studio.models.flux_net import (CHROMA, FLUX_DEV, FLUX_SCHNELL, FluxConfig, FluxTransformer,
                                         chroma_text_mask, config_from_state_dict, diffusers_to_bfl)

HIDDEN = 32
TINY_DEV = FluxConfig(in_channels=16, vec_in_dim=16, context_in_dim=32, hidden_size=HIDDEN, num_heads=2, depth=2,
                      depth_single_blocks=2, axes_dim=(4, 6, 6))
TINY_SCHNELL = dataclasses.replace(TINY_DEV, guidance_embed=False)
TINY_CHROMA = dataclasses.replace(TINY_DEV, vec_in_dim=768, guidance_embed=False, chroma=True, approximator_in_dim=8,
                                  approximator_hidden_size=32, approximator_depth=2)
TINY = {"dev": TINY_DEV, "schnell": TINY_SCHNELL, "chroma": TINY_CHROMA}
BATCH, SIDE, TEXT = 2, 4, 8  # 4 x 4 packed latent tokens, 8 text tokens


def tiny_model(kind: str, seed: int = 0) -> FluxTransformer:
    """Default init, plus RMSNorm scales away from 1 so that they count."""
    torch.manual_seed(seed)
    model = FluxTransformer(TINY[kind]).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".scale"):
                param.uniform_(0.5, 1.5)
    return model


def tiny_inputs(kind: str, seed: int = 1) -> dict:
    generator = torch.Generator().manual_seed(seed)
    rows, cols = torch.arange(SIDE).repeat_interleave(SIDE), torch.arange(SIDE).repeat(SIDE)
    img_ids = torch.stack([torch.zeros(SIDE * SIDE), rows, cols], -1)  # (0, row, col) as sd-scripts' prepare_img_ids
    return {
        "img": torch.randn(BATCH, SIDE * SIDE, 16, generator=generator),
        "img_ids": img_ids.expand(BATCH, -1, -1),
        "txt": torch.randn(BATCH, TEXT, 32, generator=generator),
        "txt_ids": torch.zeros(BATCH, TEXT, 3),
        "timesteps": torch.tensor([0.3, 0.8]),
        "y": torch.randn(BATCH, 16, generator=generator),
        "guidance": torch.tensor([1.0, 3.5]) if kind == "dev" else None,
    }


def text_mask() -> torch.Tensor:
    mask = torch.ones(BATCH, TEXT, dtype=torch.bool)
    mask[0, 5:], mask[1, 3:] = False, False
    return mask


class _TorchAtTinyWidth:
    """diffusers' converters hard-code inner_dim 3072 when they split a single block's linear1 into q, k, v and the
    MLP input; this stand-in for their ``torch`` maps that split to the tiny width and passes everything else on."""

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def split(tensor, sizes, dim=0):
        if tuple(sizes) == (3072, 3072, 3072, 12288):
            sizes = (HIDDEN, HIDDEN, HIDDEN, 4 * HIDDEN)
        return torch.split(tensor, sizes, dim)


def diffusers_twin(kind: str, model: FluxTransformer, monkeypatch):
    """The diffusers model (dit-families.md 4.1 / 4.2 tiny configs at our sizes) loaded, strictly, with our weights
    converted by diffusers' own single-file converter."""
    import diffusers.loaders.single_file_utils as single_file_utils
    from diffusers import ChromaTransformer2DModel, FluxTransformer2DModel

    monkeypatch.setattr(single_file_utils, "torch", _TorchAtTinyWidth())
    ours = {k: v.clone() for k, v in model.state_dict().items()}
    common = dict(patch_size=1, in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=16,
                  num_attention_heads=2, joint_attention_dim=32, axes_dims_rope=(4, 6, 6))
    if kind == "chroma":
        converted = single_file_utils.convert_chroma_transformer_checkpoint_to_diffusers(ours)
        twin = ChromaTransformer2DModel(**common, approximator_num_channels=8, approximator_hidden_dim=32,
                                        approximator_layers=2)
    else:
        converted = single_file_utils.convert_flux_transformer_checkpoint_to_diffusers(ours)
        twin = FluxTransformer2DModel(**common, pooled_projection_dim=16, guidance_embeds=kind == "dev")
    twin.load_state_dict(converted, strict=True)
    return twin.eval()


def run_diffusers(kind: str, twin, inputs: dict, mask: torch.Tensor | None) -> torch.Tensor:
    args = dict(hidden_states=inputs["img"], encoder_hidden_states=inputs["txt"], timestep=inputs["timesteps"],
                img_ids=inputs["img_ids"][0], txt_ids=inputs["txt_ids"][0])
    joint_mask = None if mask is None else torch.cat([mask, torch.ones(BATCH, SIDE * SIDE, dtype=torch.bool)], 1)
    if kind == "chroma":
        return twin(**args, attention_mask=joint_mask).sample
    kwargs = None if mask is None else {"attention_mask": joint_mask[:, None, None, :]}  # keys only, as sd-scripts
    return twin(**args, pooled_projections=inputs["y"], guidance=inputs["guidance"],
                joint_attention_kwargs=kwargs).sample


@pytest.mark.parametrize("kind", ["dev", "schnell", "chroma"])
def test_forward_equals_diffusers_with_and_without_text_mask(kind, monkeypatch):
    model = tiny_model(kind)
    twin = diffusers_twin(kind, model, monkeypatch)
    inputs = tiny_inputs(kind)
    with torch.no_grad():
        for mask in (None, text_mask()):
            ours = model(**inputs, txt_mask=mask)
            assert ours.shape == (BATCH, SIDE * SIDE, 16)
            assert (ours - run_diffusers(kind, twin, inputs, mask)).abs().max() <= 1e-5


@pytest.mark.parametrize("kind", ["dev", "schnell", "chroma"])
def test_masked_text_tokens_change_nothing(kind):
    model, inputs, mask = tiny_model(kind), tiny_inputs(kind), text_mask()
    with torch.no_grad():
        masked = model(**inputs, txt_mask=mask)
        inputs["txt"] = torch.where(mask[..., None], inputs["txt"], 100 * torch.randn_like(inputs["txt"]))
        assert torch.equal(model(**inputs, txt_mask=mask), masked)
        assert not torch.allclose(model(**inputs), masked, atol=1e-3)  # the same change unmasked does count


@pytest.mark.parametrize("kind", ["dev", "schnell", "chroma"])
def test_diffusers_to_bfl_inverts_diffusers_converter(kind, monkeypatch):
    model = tiny_model(kind)
    ours = model.state_dict()
    back = diffusers_to_bfl(diffusers_twin(kind, model, monkeypatch).state_dict(), TINY[kind])
    assert set(back) == set(ours)
    for key, value in ours.items():
        assert torch.equal(back[key], value), key


def test_diffusers_to_bfl_refuses_a_mismatched_model(monkeypatch):
    dev = diffusers_twin("dev", tiny_model("dev"), monkeypatch).state_dict()
    with pytest.raises(UserError, match="guidance_embedder"):  # dev weights read as schnell: guidance left over
        diffusers_to_bfl(dev, TINY_SCHNELL)
    with pytest.raises(UserError, match="transformer_blocks.2"):
        diffusers_to_bfl(dev, dataclasses.replace(TINY_DEV, depth=3))


REAL = {"dev": (FLUX_DEV, 304), "schnell": (FLUX_SCHNELL, 304), "chroma": (CHROMA, 228)}


@pytest.mark.parametrize("kind", ["dev", "schnell", "chroma"])
def test_real_sizes_on_meta_device(kind):
    config, block_linears = REAL[kind]
    with torch.device("meta"):
        model = FluxTransformer(config)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert model.block_layout() == (19, 38)
    linears = [name for name, m in model.named_modules()
               if isinstance(m, nn.Linear) and name.startswith(("double_blocks.", "single_blocks."))]
    assert len(linears) == block_linears  # what sd-scripts' LoRA targets
    assert shapes["double_blocks.0.img_attn.qkv.weight"] == (9216, 3072)
    assert shapes["single_blocks.37.linear1.weight"] == (21504, 3072)  # 3 x 3072 + 12288
    assert shapes["double_blocks.18.txt_attn.norm.key_norm.scale"] == (128,)
    assert ("guidance_in.in_layer.weight" in shapes) == (kind == "dev")
    assert ("double_blocks.0.img_mod.lin.weight" in shapes) == (kind != "chroma")
    assert ("distilled_guidance_layer.layers.4.out_layer.weight" in shapes) == (kind == "chroma")
    params = sum(p.numel() for p in model.parameters())
    expected = {"dev": 11.90e9, "schnell": 11.89e9, "chroma": 8.90e9}[kind]
    assert abs(params - expected) < 0.005e9, params
    assert config_from_state_dict(shapes) == config
    prefixed = {"model.diffusion_model." + k: v for k, v in shapes.items()}  # a full (ComfyUI-style) checkpoint
    assert config_from_state_dict(prefixed) == config


def test_config_from_state_dict_reads_pruned_and_tiny_models():
    with torch.device("meta"):
        pruned = FluxTransformer(dataclasses.replace(FLUX_DEV, depth=8)).state_dict()
    assert config_from_state_dict(pruned).depth == 8
    for config in TINY.values():
        state = FluxTransformer(config).state_dict()
        assert config_from_state_dict(state, axes_dim=(4, 6, 6)) == config
        with pytest.raises(UserError, match="axes_dim"):
            config_from_state_dict(state)
    gap = {k: v for k, v in pruned.items() if not k.startswith("double_blocks.3.")}
    with pytest.raises(UserError, match="gaps"):
        config_from_state_dict(gap)
    with pytest.raises(UserError, match="not a Flux"):
        config_from_state_dict({"model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3)})


def test_flux_dev_needs_guidance_and_chroma_mask_attends_one_padding_token():
    model, inputs = tiny_model("dev"), tiny_inputs("dev")
    inputs["guidance"] = None
    with pytest.raises(ValueError, match="guidance"):
        model(**inputs)
    tokens = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert chroma_text_mask(tokens).tolist() == [[True, True, True, True, False], [True] * 5]


# ---------------------------------------------------------------- checkpointing and block swap

def loss_and_grad(model: FluxTransformer, kind: str, mask: torch.Tensor | None = None, extra: tuple = ()):
    """One training step's loss and the gradients of the model's trainable parameters and of ``extra`` ones."""
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad] + list(extra)
    for param in trainable:
        param.grad = None
    loss = model(**tiny_inputs(kind), txt_mask=mask).pow(2).mean()
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in trainable]


def frozen_except_img_in(kind: str) -> FluxTransformer:
    model = tiny_model(kind)
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith("img_in."))
    return model


@pytest.mark.parametrize("kind", ["dev", "chroma"])
def test_checkpointing_and_block_swap_keep_loss_and_gradients(kind):
    model = frozen_except_img_in(kind)
    mask = text_mask()
    want_loss, want_grads = loss_and_grad(model, kind, mask)

    def check():
        loss, grads = loss_and_grad(model, kind, mask)
        assert torch.allclose(loss, want_loss, rtol=0, atol=1e-7)
        for grad, want in zip(grads, want_grads, strict=True):
            assert torch.allclose(grad, want, rtol=0, atol=1e-7)

    for cpu_offload in (False, True):
        model.enable_gradient_checkpointing(cpu_offload=cpu_offload)
        check()
    model.disable_gradient_checkpointing()
    doubles, singles = swap_blocks(model.double_blocks, 1, "cpu"), swap_blocks(model.single_blocks, 2, "cpu")
    check()
    assert (doubles.loads, singles.loads, singles.unloads) == (1, 2, 2)  # each swapped block once per forward
    model.enable_gradient_checkpointing()
    check()
    assert (doubles.loads, singles.loads, singles.unloads) == (3, 6, 6)  # + forward + recompute in the backward
    doubles.remove(), singles.remove()
    check()
    assert (doubles.loads, singles.loads) == (3, 6)  # hooks gone
    assert all(p.device.type == "cpu" for p in doubles.managed_parameters())


def test_block_swap_moves_only_frozen_base_weights_not_lora():
    from lora_studio.network.lora import LoRAModule

    model = frozen_except_img_in("dev")
    block = model.double_blocks[1]
    block.img_mod.lin.weight.requires_grad_(True)  # a trainable base parameter stays where it is too
    adapter = LoRAModule("lora_unet_double_blocks_1_img_attn_qkv", block.img_attn.qkv, rank=2, alpha=1)
    nn.init.normal_(adapter.lora_up.weight)
    adapter.attach()
    lora_params = tuple(adapter.parameters())
    want_loss, want_grads = loss_and_grad(model, "dev", extra=lora_params)

    qkv, original, down = block.img_attn.qkv, block.img_attn.qkv.weight, adapter.lora_down.weight
    seen = {}

    def record(module, args):
        seen["base copied in"] = module.weight is not original
        seen["trainable untouched"] = block.img_mod.lin.weight.requires_grad and block.img_mod.lin.weight.is_leaf
        seen["adapter untouched"] = adapter.lora_down.weight is down

    hook = qkv.register_forward_pre_hook(record)
    handle = swap_blocks(model.double_blocks, 1, "cpu")
    managed = {id(p) for p in handle.managed_parameters()}
    assert id(original) in managed and id(block.img_mod.lin.weight) not in managed
    assert not managed & {id(p) for p in adapter.parameters()}
    loss, grads = loss_and_grad(model, "dev", extra=lora_params)
    hook.remove()
    assert seen == {"base copied in": True, "trainable untouched": True, "adapter untouched": True}
    assert qkv.weight is original  # put back after the block ran
    assert torch.equal(loss, want_loss)
    for grad, want in zip(grads, want_grads, strict=True):
        assert torch.allclose(grad, want, rtol=0, atol=1e-7)
    handle.remove()


def test_enable_block_swap_splits_as_sd_scripts():
    config = dataclasses.replace(TINY_DEV, depth=4, depth_single_blocks=6)
    model = FluxTransformer(config)
    handles = model.enable_block_swap(3, "cpu")  # 3 // 2 = 1 double, (3 - 1) * 2 = 4 single
    assert [len(h.swapped) for h in handles.handles] == [1, 4]
    assert handles.handles[0].swapped == [model.double_blocks[3]]
    handles.remove()
    with pytest.raises(UserError, match="too many"):
        model.enable_block_swap(5, "cpu")  # 6 single blocks would leave none


@pytest.mark.parametrize("kind", ["dev", "chroma"])
def test_bfloat16_model_runs_in_bfloat16_near_float32(kind):
    model, inputs = tiny_model(kind), tiny_inputs(kind)
    with torch.no_grad():
        want = model(**inputs, txt_mask=text_mask())
        model.to(torch.bfloat16)
        for name in ("img", "txt", "y"):
            inputs[name] = inputs[name].to(torch.bfloat16)  # timesteps and guidance stay float32, as in training
        got = model(**inputs, txt_mask=text_mask())
    assert got.dtype == torch.bfloat16
    assert (got.float() - want).abs().max() < 0.05
