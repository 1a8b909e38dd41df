"""Names of base-model weights in single-file (A1111 / LDM) checkpoints, from diffusers names.

One mapping serves both directions: loading a checkpoint asks, for every weight of the diffusers model, where it sits
in the file; writing one (tests, the demo) puts it there.
"""

from __future__ import annotations

import re

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TE_PREFIX = "cond_stage_model.transformer."

_UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _resnet(rest: str, table: dict[str, str]) -> str:
    head, _, tail = rest.partition(".")
    return f"{table.get(head, head)}.{tail}"


def unet_key(key: str, layers_per_block: int, up_block_has_attention: list[bool]) -> str:
    """diffusers UNet2DConditionModel weight name -> LDM name (without the ``model.diffusion_model.`` prefix)."""
    per_level = layers_per_block + 1
    fixed = {"time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.",
             "add_embedding.linear_1.": "label_emb.0.0.", "add_embedding.linear_2.": "label_emb.0.2.",
             "conv_in.": "input_blocks.0.0.", "conv_norm_out.": "out.0.", "conv_out.": "out.2."}
    for old, new in fixed.items():
        if key.startswith(old):
            return new + key[len(old):]
    if m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        block = 1 + i * per_level + j
        return f"input_blocks.{block}.0.{_resnet(rest, _UNET_RESNET)}" if kind == "resnets" else \
            f"input_blocks.{block}.1.{rest}"
    if m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
        return f"input_blocks.{(int(m[1]) + 1) * per_level}.0.op.{m[2]}"
    if m := re.match(r"mid_block\.resnets\.(\d+)\.(.*)", key):
        return f"middle_block.{2 * int(m[1])}.{_resnet(m[2], _UNET_RESNET)}"
    if m := re.match(r"mid_block\.attentions\.0\.(.*)", key):
        return f"middle_block.1.{m[1]}"
    if m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        block = i * per_level + j
        return f"output_blocks.{block}.0.{_resnet(rest, _UNET_RESNET)}" if kind == "resnets" else \
            f"output_blocks.{block}.1.{rest}"
    if m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
        i = int(m[1])
        return f"output_blocks.{i * per_level + layers_per_block}.{2 if up_block_has_attention[i] else 1}.conv.{m[2]}"
    raise KeyError(f"no LDM name for UNet weight {key}")


def vae_key(key: str, num_levels: int) -> str:
    """diffusers AutoencoderKL weight name -> LDM name (without the ``first_stage_model.`` prefix)."""
    for part in ("encoder", "decoder"):
        if key.startswith(f"{part}.conv_norm_out."):
            return f"{part}.norm_out." + key.split("conv_norm_out.", 1)[1]
        if m := re.match(rf"{part}\.mid_block\.resnets\.(\d+)\.(.*)", key):
            return f"{part}.mid.block_{int(m[1]) + 1}.{_resnet(m[2], {'conv_shortcut': 'nin_shortcut'})}"
        if m := re.match(rf"{part}\.mid_block\.attentions\.0\.(.*)", key):
            rest = m[1]
            for old, new in _VAE_ATTN.items():
                if rest.startswith(old + "."):
                    return f"{part}.mid.attn_1.{new}.{rest[len(old) + 1:]}"
    if m := re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
        return f"encoder.down.{m[1]}.block.{m[2]}.{_resnet(m[3], {'conv_shortcut': 'nin_shortcut'})}"
    if m := re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
        return f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
    if m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
        level = num_levels - 1 - int(m[1])
        return f"decoder.up.{level}.block.{m[2]}.{_resnet(m[3], {'conv_shortcut': 'nin_shortcut'})}"
    if m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
        return f"decoder.up.{num_levels - 1 - int(m[1])}.upsample.conv.{m[2]}"
    return key  # conv_in, conv_out, quant_conv, post_quant_conv keep their names


def is_vae_attention_matrix(key: str) -> bool:
    """VAE mid-block attention projections: Linear [C, C] in diffusers, 1x1 conv [C, C, 1, 1] in LDM files."""
    return ".mid_block.attentions.0." in key and key.endswith(".weight") and "group_norm" not in key


def te_key(key: str) -> str:
    """transformers CLIPTextModel weight -> name under ``cond_stage_model.transformer.`` (always with text_model.)."""
    return key if key.startswith("text_model.") else f"text_model.{key}"


# ---- SD2.x: the OpenCLIP ViT-H text encoder under cond_stage_model.model. ----
OPENCLIP_PREFIX = "cond_stage_model.model."
# SDXL: CLIP ViT-L in transformers naming, OpenCLIP ViT-bigG (all layers, with its text projection).
SDXL_TE1_PREFIX = "conditioner.embedders.0.transformer."
SDXL_TE2_PREFIX = "conditioner.embedders.1.model."
_OPENCLIP_LAYER = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
                   "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}


def openclip_to_clip(sd: dict, prefix: str = OPENCLIP_PREFIX, drop_last: bool = True) -> dict:
    """OpenCLIP text-encoder weights -> transformers CLIPTextModel names (fused q/k/v split in three).

    SD2 conditions on the penultimate layer, so the last resblock is left out, as sd-scripts and diffusers do: the
    converted model has one layer fewer and its last hidden state (after the final layer norm) is what SD2 uses.
    """
    layers = {int(m[1]) for k in sd if (m := re.match(re.escape(prefix) + r"transformer\.resblocks\.(\d+)\.", k))}
    last = max(layers) if drop_last else None
    out = {"embeddings.token_embedding.weight": sd[prefix + "token_embedding.weight"],
           "embeddings.position_embedding.weight": sd[prefix + "positional_embedding"],
           "final_layer_norm.weight": sd[prefix + "ln_final.weight"],
           "final_layer_norm.bias": sd[prefix + "ln_final.bias"]}
    if prefix + "text_projection" in sd:  # OpenCLIP multiplies x @ P; transformers' Linear holds P transposed
        out["text_projection.weight"] = sd[prefix + "text_projection"].t().contiguous()
    for i in sorted(layers - {last}):
        src, dst = f"{prefix}transformer.resblocks.{i}.", f"encoder.layers.{i}."
        for kind in ("weight", "bias"):
            q, k, v = sd[f"{src}attn.in_proj_{kind}"].chunk(3, dim=0)
            out[f"{dst}self_attn.q_proj.{kind}"], out[f"{dst}self_attn.k_proj.{kind}"] = q, k
            out[f"{dst}self_attn.v_proj.{kind}"] = v
            for old, new in _OPENCLIP_LAYER.items():
                out[f"{dst}{new}.{kind}"] = sd[f"{src}{old}.{kind}"]
    return out


def clip_to_openclip(state: dict, extra_layer: dict | None, prefix: str = OPENCLIP_PREFIX) -> dict:
    """The inverse, for writing checkpoints (``lora merge --model``, tests): ``extra_layer`` (CLIP names of one layer), when given, becomes the
    last resblock, the one SD2 does not use."""
    import torch

    layers = sorted({int(m[1]) for k in state if (m := re.match(r"(?:text_model\.)?encoder\.layers\.(\d+)\.", k))})
    plain = {k.removeprefix("text_model."): v for k, v in state.items()}
    out = {prefix + "token_embedding.weight": plain["embeddings.token_embedding.weight"],
           prefix + "positional_embedding": plain["embeddings.position_embedding.weight"],
           prefix + "ln_final.weight": plain["final_layer_norm.weight"],
           prefix + "ln_final.bias": plain["final_layer_norm.bias"]}
    sources = [(i, {k.split(f"encoder.layers.{i}.", 1)[1]: v for k, v in plain.items()
                    if k.startswith(f"encoder.layers.{i}.")}) for i in layers]
    if extra_layer is not None:
        sources.append((len(layers), extra_layer))
    if "text_projection.weight" in plain:
        out[prefix + "text_projection"] = plain["text_projection.weight"].t().contiguous()
    for i, layer in sources:
        dst = f"{prefix}transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{kind}"] = torch.cat(
                [layer[f"self_attn.{p}_proj.{kind}"] for p in ("q", "k", "v")], dim=0)
            for old, new in _OPENCLIP_LAYER.items():
                out[f"{dst}{old}.{kind}"] = layer[f"{new}.{kind}"]
    return out
