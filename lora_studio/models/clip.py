"""CLIP text encoders as the Stable Diffusion families use them: prompt encoding as sd-scripts does it, and the layers
a LoRA adapts with their names in a LoRA file."""

from __future__ import annotations

import torch

# Children of a CLIP encoder layer that get an adapter, with their names in a LoRA file. All four attention
# projections are trained when the text encoder is (diffusers' own recipe drops q/k/v without out_proj).
TE_TARGETS = {"self_attn.q_proj": "self_attn_q_proj", "self_attn.k_proj": "self_attn_k_proj",
              "self_attn.v_proj": "self_attn_v_proj", "self_attn.out_proj": "self_attn_out_proj",
              "mlp.fc1": "mlp_fc1", "mlp.fc2": "mlp_fc2"}


def encoder_layers(text_encoder) -> torch.nn.ModuleList:
    """The CLIP encoder's layer list, wherever the installed transformers version puts it."""
    for name, module in text_encoder.named_modules():
        if name.endswith("encoder.layers") and isinstance(module, torch.nn.ModuleList):
            return module
    raise RuntimeError("no encoder.layers in the text encoder")


def adapted_layers(text_encoder, prefix: str, attention_only: bool = False) -> list[tuple[str, torch.nn.Module]]:
    """(LoRA stem, module) for q/k/v/out_proj and fc1/fc2 (only the former with ``attention_only``) of every
    encoder layer. The stems come from this fixed table, never from ``named_modules()``: transformers 5 dropped the
    ``text_model.`` level those names had."""
    return [(f"{prefix}_text_model_encoder_layers_{i}_{name}", layer.get_submodule(child))
            for i, layer in enumerate(encoder_layers(text_encoder)) for child, name in TE_TARGETS.items()
            if not attention_only or child.startswith("self_attn.")]


def _final_layer_norm(text_encoder):
    for name, module in text_encoder.named_modules():
        if name.endswith("final_layer_norm"):
            return module
    raise RuntimeError("no final_layer_norm in the text encoder")


def weighted_token_ids(tokenizer, captions: list[str], total: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(ids, weights) of ``captions`` with A1111 emphasis (weighted_captions), both [batch, total], laid out as the
    tokenizer pads: start token, the caption's tokens (each emphasis part tokenized on its own, as sd-scripts does),
    end token, padding; every token outside the caption weighs 1. ``weights`` is None when every token weighs 1."""
    from ..data.prompt_weights import parse_emphasis, token_weights

    parsed = [parse_emphasis(caption) for caption in captions]
    texts = [text for parts in parsed for text, _ in parts]
    tokenized = [ids[1:-1] for ids in tokenizer(texts, verbose=False).input_ids]
    rows, weight_rows, start = [], [], 0
    for parts in parsed:
        ids, weights = token_weights(parts, tokenized[start:start + len(parts)], total - 2)
        start += len(parts)
        fill = total - 2 - len(ids)
        rows.append([tokenizer.bos_token_id] + ids + [tokenizer.eos_token_id] + [tokenizer.pad_token_id] * fill)
        weight_rows.append([1.0] + weights + [1.0] * (fill + 1))
    plain = all(w == 1.0 for row in weight_rows for w in row)
    return torch.tensor(rows), None if plain else torch.tensor(weight_rows)


def encode_with_clip(text_encoder, tokenizer, captions: list[str], clip_skip: int, max_token_length: int,
                     device, final_norm: bool = True, pooled: bool = False, weighted: bool = False):
    """Hidden states of ``captions`` as sd-scripts computes them.

    Captions longer than 75 tokens (max_token_length 150/225) are encoded in 75-token chunks, each framed by start
    and end tokens, and joined keeping one start token at the front and one end token at the back. With ``pooled``,
    also the projected pooled output of the first chunk (SDXL's second encoder), as sd-scripts takes it.

    With ``weighted`` (weighted_captions), captions use A1111 emphasis: the hidden state of each caption token is
    multiplied by its weight, with no rescaling afterwards (sd-scripts' training does none); the pooled output is not
    weighted. A caption without emphasis encodes exactly as without ``weighted``.
    """
    chunk = tokenizer.model_max_length  # 77
    total = max_token_length + 2
    weights = None
    if weighted:
        ids, weights = weighted_token_ids(tokenizer, captions, total)
    else:
        ids = tokenizer(captions, padding="max_length", truncation=True, max_length=total,
                        return_tensors="pt").input_ids
    ids = ids.to(device)
    if total == chunk:
        pieces = [ids]
    else:
        body = ids[:, 1:-1]
        bos = ids[:, :1]
        eos = torch.full_like(bos, tokenizer.eos_token_id)
        # A chunk past the caption's end holds padding after its end token, as the tokenizer pads.
        pieces = [torch.cat([bos, body[:, start:start + chunk - 2], eos], dim=1)
                  for start in range(0, max_token_length, chunk - 2)]
    states, pooled_out = [], None
    for piece in pieces:
        out = text_encoder(piece, output_hidden_states=clip_skip > 1, return_dict=True)
        if clip_skip > 1:
            hidden = out.hidden_states[-clip_skip]
            if final_norm:
                hidden = _final_layer_norm(text_encoder)(hidden)
        else:
            hidden = out.last_hidden_state
        states.append(hidden)
        if pooled and pooled_out is None:
            pooled_out = out.text_embeds
    if len(states) == 1:
        joined = states[0]
    else:
        joined = torch.cat([states[0][:, :1]] + [s[:, 1:-1] for s in states] + [states[-1][:, -1:]], dim=1)
    if weights is not None:  # the joined states have the ids' layout: one weight a position
        joined = joined * weights.to(joined.device).unsqueeze(-1)
    return (joined, pooled_out) if pooled else joined
