"""Flux / Chroma text side and autoencoder (models/flux_parts.py) on tiny files in the users' layouts (tiny_flux.py).

Nothing is downloaded: the T5 tokenizer is a tiny one written into a tokenizer_cache_dir, and the offline test runs
with HF_HUB_OFFLINE=1 and an empty HF_HOME.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lora_studio.errors import UserError
from lora_studio.models import flux_parts, tiny_flux
from lora_studio.models.tokenizer import clip_tokenizer

CAPTIONS = ["a photo of sks dog", "cat"]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("flux_parts")
    clip_path, t5_path = tiny_flux.write_tiny_text_encoders(folder)
    return {"clip_l": clip_path, "t5xxl": t5_path, "ae": tiny_flux.write_tiny_ae(folder / "ae.safetensors"),
            "t5_fp8": tiny_flux.write_t5_fp8(t5_path, folder / "t5xxl_fp8_e4m3fn.safetensors"),
            "tokenizers": tiny_flux.write_tiny_tokenizers(folder / "tokenizers"), "folder": folder}


@pytest.fixture(scope="module")
def loaded(files):
    clip_tok, t5_tok = flux_parts.load_tokenizers(str(files["tokenizers"]))
    return {"clip": flux_parts.load_clip_l(files["clip_l"], torch.float32),
            "t5": flux_parts.load_t5xxl(files["t5xxl"], torch.float32), "clip_tok": clip_tok, "t5_tok": t5_tok}


def assert_same_weights(model, reference) -> None:
    ours, theirs = model.state_dict(), reference.state_dict()
    assert set(ours) == set(theirs)
    for name, tensor in theirs.items():
        assert torch.equal(ours[name], tensor), name


# ---------------------------------------------------------------- round trips
def test_clip_l_and_t5_load_as_written(loaded):
    clip, t5 = loaded["clip"], loaded["t5"]
    assert_same_weights(clip, tiny_flux.build_tiny_clip_l(0))
    assert_same_weights(t5, tiny_flux.build_tiny_t5(1))
    assert (clip.config.hidden_size, clip.config.num_hidden_layers, clip.config.num_attention_heads) == (32, 2, 2)
    assert clip.config.vocab_size == 49408
    assert (t5.config.d_model, t5.config.d_kv, t5.config.d_ff, t5.config.num_heads) == (32, 16, 64, 2)
    assert t5.config.is_gated_act and t5.config.relative_attention_num_buckets == 32
    assert t5.encoder.embed_tokens.weight is t5.shared.weight  # tied, one copy
    assert not any(p.requires_grad for p in t5.parameters())


def test_clip_l_under_a_comfyui_prefix_loads_the_same(files, loaded, tmp_path):
    state = {f"text_encoders.clip_l.transformer.{k}": v for k, v in load_file(str(files["clip_l"])).items()}
    state["text_encoders.clip_l.logit_scale"] = torch.ones(())  # extra tensors are left out
    save_file(state, str(tmp_path / "combined.safetensors"))
    assert_same_weights(flux_parts.load_clip_l(tmp_path / "combined.safetensors", torch.float32), loaded["clip"])


def test_ae_loads_as_written_and_encodes_16_channels_at_one_eighth(files):
    ae, reference = flux_parts.load_ae(files["ae"], torch.float32), tiny_flux.build_tiny_ae(0)
    assert_same_weights(ae, reference)
    assert ae.config.latent_channels == 16 and ae.quant_conv is None and ae.post_quant_conv is None
    assert (ae.config.scaling_factor, ae.config.shift_factor) == (0.3611, 0.1159)
    pixels = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        raw = ae.encode(pixels).latent_dist.mean
        expected = reference.encode(pixels).latent_dist.mean
    assert raw.shape == (1, 16, 8, 8) and tiny_flux.TINY_AE_DOWNSAMPLE == 8
    assert torch.allclose(raw, expected, atol=1e-6)  # the loader does not normalise: the family applies it once


@pytest.mark.parametrize("layout", ["first_stage_model.", "vae.", "diffusers"])
def test_ae_other_layouts(files, tmp_path, layout):
    if layout == "diffusers":
        state = tiny_flux.build_tiny_ae(0).state_dict()
    else:
        state = {layout + k: v for k, v in load_file(str(files["ae"])).items()}
    save_file(state, str(tmp_path / "ae.safetensors"))
    assert_same_weights(flux_parts.load_ae(tmp_path / "ae.safetensors", torch.float32), tiny_flux.build_tiny_ae(0))


def test_ae_in_bfloat16(files):
    ae = flux_parts.load_ae(files["ae"], torch.bfloat16)
    assert {p.dtype for p in ae.parameters()} == {torch.bfloat16}


# ---------------------------------------------------------------- float8
def test_t5_fp8_file_kept_in_fp8_computes_as_upcast(files, loaded):
    kept = flux_parts.load_t5xxl(files["t5_fp8"], torch.float32, keep_fp8=True)
    upcast = flux_parts.load_t5xxl(files["t5_fp8"], torch.float32, keep_fp8=False)
    linear = [m for m in kept.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linear) == 2 * 7 and {m.weight.dtype for m in linear} == {torch.float8_e4m3fn}
    assert kept.shared.weight.dtype == torch.float32 and kept.encoder.final_layer_norm.weight.dtype == torch.float32
    assert {p.dtype for p in upcast.parameters()} == {torch.float32}
    ids = loaded["t5_tok"](CAPTIONS, max_length=16, padding="max_length", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        fp8_out = kept(input_ids=ids).last_hidden_state
        upcast_out = upcast(input_ids=ids).last_hidden_state
        full = loaded["t5"](input_ids=ids).last_hidden_state
    assert torch.allclose(fp8_out, upcast_out, atol=1e-5)  # same weights, same compute dtype
    relative = ((fp8_out - full).norm() / full.norm()).item()
    assert relative < 0.15, relative  # float8 rounding of the weights only (e4m3: ~3% a weight)


def test_t5_fp16_file_kept_in_fp8(files, tmp_path):
    state = {k: v.half() for k, v in load_file(str(files["t5xxl"])).items()}
    save_file(state, str(tmp_path / "t5xxl_fp16.safetensors"))
    kept = flux_parts.load_t5xxl(tmp_path / "t5xxl_fp16.safetensors", torch.bfloat16, keep_fp8=True)
    assert {m.weight.dtype for m in kept.modules() if isinstance(m, torch.nn.Linear)} == {torch.float8_e4m3fn}
    assert kept.shared.weight.dtype == torch.bfloat16
    with torch.no_grad():
        out = kept(input_ids=torch.tensor([[5, 6, 1, 0]])).last_hidden_state
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_t5_in_float16_keeps_wo_in_float32(files):
    t5 = flux_parts.load_t5xxl(files["t5xxl"], torch.float16)
    ff = t5.encoder.block[0].layer[1].DenseReluDense
    assert ff.wo.weight.dtype == torch.float32 and ff.wi_0.weight.dtype == torch.float16


def test_float8_e5m2_file_is_refused(files, tmp_path):
    path = tiny_flux.write_t5_fp8(files["t5xxl"], tmp_path / "t5xxl_e5m2.safetensors", "float8_e5m2")
    with pytest.raises(UserError, match=r"t5xxl: .*F8_E5M2.*float8_e4m3fn"):
        flux_parts.load_t5xxl(path, torch.float32)


# ---------------------------------------------------------------- tokenizers
def test_tokenizer_cache_dir_layout(files):
    clip_tok, t5_tok = flux_parts.load_tokenizers(str(files["tokenizers"]))
    assert (files["tokenizers"] / "google_t5-v1_1-xxl" / "tokenizer.json").is_file()
    assert clip_tok(CAPTIONS, padding="max_length", max_length=77).input_ids == \
        clip_tokenizer()(CAPTIONS, padding="max_length", max_length=77).input_ids
    assert (t5_tok.pad_token_id, t5_tok.eos_token_id, t5_tok.unk_token_id) == (0, 1, 2)
    ids = t5_tok(CAPTIONS).input_ids
    assert ids[1] == [t5_tok.convert_tokens_to_ids("\u2581cat"), 1]
    assert all(row[-1] == 1 and 2 not in row for row in ids)
    no_clip, t5_only = flux_parts.load_tokenizers(str(files["tokenizers"]), need_clip=False)
    assert no_clip is None and t5_only(CAPTIONS).input_ids == ids


def test_clip_tokenizer_is_built_in_without_its_folder(files, tmp_path):
    cache = tiny_flux.write_tiny_tokenizers(tmp_path / "cache", with_clip=False)
    clip_tok, _ = flux_parts.load_tokenizers(str(cache))
    assert clip_tok("a photo").input_ids == clip_tokenizer()("a photo").input_ids


def _offline(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("LORA_STUDIO_USER_HF_OFFLINE", raising=False)  # the command line's record of the user's own
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_hf_home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)


def test_offline_without_the_t5_tokenizer_says_what_to_put_where(monkeypatch, tmp_path):
    _offline(monkeypatch, tmp_path)
    cache = tmp_path / "tokenizers"
    with pytest.raises(UserError) as info:
        flux_parts.load_tokenizers(str(cache))
    message = str(info.value)
    for needed in ("tokenizer_cache_dir", "google/t5-v1_1-xxl", str(cache / "google_t5-v1_1-xxl"), "spiece.model",
                   "tokenizer_config.json", "special_tokens_map.json", "HF_HUB_OFFLINE=1",
                   str(tmp_path / "empty_hf_home" / "hub")):
        assert needed in message, needed
    with pytest.raises(UserError, match=r"<tokenizer_cache_dir>/google_t5-v1_1-xxl/ \(tokenizer_cache_dir is not"):
        flux_parts.load_tokenizers(None)


def test_an_empty_t5_folder_in_the_cache_dir_is_named(tmp_path):
    folder = tmp_path / "cache" / "google_t5-v1_1-xxl"
    folder.mkdir(parents=True)
    with pytest.raises(UserError, match=r"tokenizer_cache_dir: .*google_t5-v1_1-xxl holds no T5 tokenizer"):
        flux_parts.load_tokenizers(str(tmp_path / "cache"))


def test_the_hugging_face_cache_is_used_and_copied_to_the_cache_dir(monkeypatch, tmp_path):
    """A tokenizer in the Hugging Face cache's layout (snapshots/<commit>/, refs/main) loads offline and is then
    saved into tokenizer_cache_dir, as sd-scripts does."""
    _offline(monkeypatch, tmp_path)
    repo = tmp_path / "empty_hf_home" / "hub" / "models--google--t5-v1_1-xxl"
    commit = "0" * 40
    tiny_flux.write_tiny_tokenizers(tmp_path / "made", with_clip=False)
    (repo / "snapshots").mkdir(parents=True)
    (tmp_path / "made" / "google_t5-v1_1-xxl").rename(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    _, t5_tok = flux_parts.load_tokenizers(str(tmp_path / "cache"), need_clip=False)
    assert t5_tok("a cat").input_ids[-1] == 1
    assert (tmp_path / "cache" / "google_t5-v1_1-xxl" / "tokenizer.json").is_file()


# ---------------------------------------------------------------- prompts
def test_encode_prompts_shapes_padding_and_mask(loaded):
    out = flux_parts.encode_prompts(loaded["clip"], loaded["t5"], loaded["clip_tok"], loaded["t5_tok"], CAPTIONS,
                                    t5_max_length=24, apply_t5_mask=True, device="cpu")
    assert out["pooled"].shape == (2, 32) and out["t5"].shape == (2, 24, 32) and out["t5_mask"].shape == (2, 24)
    lengths = [len(loaded["t5_tok"](c).input_ids) for c in CAPTIONS]  # tokens with the closing </s>
    assert lengths == [6, 2]
    for row, n in zip(out["t5_mask"].tolist(), lengths):
        assert row == [1] * n + [0] * (24 - n)
    ids = loaded["clip_tok"](CAPTIONS, max_length=77, padding="max_length", truncation=True,
                             return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(out["pooled"].detach(), loaded["clip"](input_ids=ids).pooler_output)


def test_t5_mask_goes_into_attention_only_when_asked(loaded):
    def t5_rows(max_length, apply):
        with torch.no_grad():
            return flux_parts.encode_prompts(None, loaded["t5"], None, loaded["t5_tok"], CAPTIONS[:1], max_length,
                                             apply, "cpu")["t5"][0, :6]
    # masked: the caption's rows do not see the padding, so they do not depend on how much there is
    assert torch.allclose(t5_rows(8, True), t5_rows(32, True), atol=1e-5)
    assert not torch.allclose(t5_rows(8, False), t5_rows(32, False), atol=1e-3)


def test_rows_are_per_caption_and_long_captions_truncate(loaded):
    long = " ".join(["red"] * 40)
    with torch.no_grad():
        batch = flux_parts.encode_prompts(loaded["clip"], loaded["t5"], loaded["clip_tok"], loaded["t5_tok"],
                                          [CAPTIONS[0], long], 16, True, "cpu")
        alone = flux_parts.encode_prompts(loaded["clip"], loaded["t5"], loaded["clip_tok"], loaded["t5_tok"],
                                          [CAPTIONS[0]], 16, True, "cpu")
    for key in ("pooled", "t5", "t5_mask"):
        assert torch.allclose(batch[key][:1].float(), alone[key].float(), atol=1e-5), key
    assert batch["t5_mask"][1].tolist() == [1] * 16


def test_chroma_has_no_clip(loaded):
    with torch.no_grad():
        out = flux_parts.encode_prompts(None, loaded["t5"], None, loaded["t5_tok"], CAPTIONS, 16, True, "cpu")
    assert out["pooled"].shape == (2, 768) and not out["pooled"].any() and out["t5"].shape == (2, 16, 32)


def test_t5_max_length_default():
    assert (flux_parts.t5_max_length_default(schnell=False), flux_parts.t5_max_length_default(schnell=True)) == \
        (512, 256)


# ---------------------------------------------------------------- wrong files
def test_file_recognition_by_names(files):
    names = {k: list(load_file(str(files[k]))) for k in ("clip_l", "t5xxl", "ae")}
    assert flux_parts.is_clip_l(names["clip_l"]) and not flux_parts.is_clip_l(names["t5xxl"])
    assert flux_parts.is_t5(names["t5xxl"]) and not flux_parts.is_t5(names["ae"])
    assert flux_parts.is_flux_ae(names["ae"]) and not flux_parts.is_flux_ae(names["clip_l"])
    assert not flux_parts.is_flux_ae(names["ae"] + ["quant_conv.weight"])  # an SD VAE


@pytest.mark.parametrize("setting, given, says", [("t5xxl", "ae", "the Flux autoencoder"),
                                                  ("clip_l", "t5xxl", "a T5 text encoder"),
                                                  ("ae", "clip_l", "a CLIP text encoder")])
def test_a_swapped_file_names_the_setting(files, setting, given, says):
    load = {"t5xxl": flux_parts.load_t5xxl, "clip_l": flux_parts.load_clip_l, "ae": flux_parts.load_ae}[setting]
    with pytest.raises(UserError) as info:
        load(files[given], torch.float32)
    message = str(info.value)
    assert message.startswith(f"{setting}: {files[given]} is not") and says in message


def test_a_stable_diffusion_vae_is_not_the_flux_ae(files, tmp_path):
    state = load_file(str(files["ae"]))
    state["quant_conv.weight"] = torch.zeros(32, 32, 1, 1)
    save_file(state, str(tmp_path / "sd_vae.safetensors"))
    with pytest.raises(UserError, match=r"ae: .*Stable Diffusion VAE"):
        flux_parts.load_ae(tmp_path / "sd_vae.safetensors", torch.float32)


# ---------------------------------------------------------------- real sizes from shapes
def _meta_shapes(make, rename=lambda k: k) -> dict[str, tuple]:
    from lora_studio.models.ldm_build import empty

    return {rename(k): tuple(v.shape) for k, v in empty(make).state_dict().items()}


def test_configs_of_the_real_files_from_their_shapes():
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from lora_studio.models import ldm_keys

    clip = flux_parts.clip_l_config(_meta_shapes(lambda: CLIPTextModel(CLIPTextConfig(**flux_parts.CLIP_L)),
                                                 lambda k: "text_model." + k), "text_model.")
    assert (clip["hidden_size"], clip["num_hidden_layers"], clip["num_attention_heads"], clip["intermediate_size"],
            clip["vocab_size"], clip["max_position_embeddings"]) == (768, 12, 12, 3072, 49408, 77)
    t5 = flux_parts.t5_config(_meta_shapes(lambda: T5EncoderModel(T5Config(**flux_parts.T5_XXL))), "")
    assert (t5["d_model"], t5["d_ff"], t5["num_layers"], t5["num_heads"], t5["d_kv"], t5["vocab_size"],
            t5["feed_forward_proj"], t5["relative_attention_num_buckets"]) == \
        (4096, 10240, 24, 64, 64, 32128, "gated-gelu", 32)
    ae_shapes = _meta_shapes(lambda: AutoencoderKL.from_config(flux_parts.FLUX_AE), lambda k: ldm_keys.vae_key(k, 4))
    ae = flux_parts.flux_ae_config(ae_shapes, "", ldm_names=True)
    assert (ae["block_out_channels"], ae["layers_per_block"], ae["latent_channels"]) == ([128, 256, 512, 512], 2, 16)
    assert (ae["scaling_factor"], ae["shift_factor"], ae["use_quant_conv"]) == (0.3611, 0.1159, False)


def test_module_imports_without_torch():
    import subprocess
    import sys

    code = ("import sys; import lora_studio.models.flux_parts, lora_studio.models.tiny_flux; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_online_the_tokenizer_files_are_downloaded_once_and_kept(monkeypatch, tmp_path):
    """The Hub is replaced by a fake: online (HF_HUB_OFFLINE=0) the tokenizer files, and only those, are fetched with
    huggingface_hub's offline switch off, then saved into tokenizer_cache_dir; a failed download is a UserError."""
    import huggingface_hub
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("LORA_STUDIO_USER_HF_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_hf_home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    made = tiny_flux.write_tiny_tokenizers(tmp_path / "hub_copy", with_clip=False) / "google_t5-v1_1-xxl"
    calls = []

    def fake_snapshot_download(repo_id, cache_dir=None, local_files_only=False, allow_patterns=None, **_):
        calls.append((repo_id, local_files_only, tuple(allow_patterns), constants.HF_HUB_OFFLINE))
        if local_files_only:
            raise huggingface_hub.errors.LocalEntryNotFoundError("not cached")
        return str(made)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    _, t5_tok = flux_parts.load_tokenizers(str(tmp_path / "cache"), need_clip=False)
    assert t5_tok("a cat").input_ids[-1] == 1
    assert (tmp_path / "cache" / "google_t5-v1_1-xxl" / "tokenizer.json").is_file()
    assert [c[:2] for c in calls] == [("google/t5-v1_1-xxl", True), ("google/t5-v1_1-xxl", False)]
    assert set(calls[1][2]) == set(flux_parts.T5_TOKENIZER_FILES) and calls[1][3] is False
    calls.clear()  # the second time it comes from tokenizer_cache_dir
    flux_parts.load_tokenizers(str(tmp_path / "cache"), need_clip=False)
    assert calls == []

    def failing(repo_id, local_files_only=False, **_):
        raise OSError("no connection")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", failing)
    with pytest.raises(UserError, match=r"the download failed \(OSError: no connection\).*google_t5-v1_1-xxl/"):
        flux_parts.load_tokenizers(str(tmp_path / "other_cache"), need_clip=False)
