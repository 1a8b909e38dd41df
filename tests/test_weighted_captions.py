"""weighted_captions: A1111 emphasis in captions, read and applied to the text-encoder outputs as sd-scripts does
(each caption token's hidden state times its weight, no rescaling, SDXL's pooled output untouched)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from lora_studio.config import build_config
from lora_studio.config.schema import BY_NAME, UNSUPPORTED
from lora_studio.data.prompt_weights import parse_emphasis, separator_inside_brackets, token_weights

UP, DOWN = 1.1, 1 / 1.1


# ---------------------------------------------------------------- the parser
@pytest.mark.parametrize("caption, parts", [
    ("a cat, red hair", [("a cat, red hair", 1.0)]),
    ("(a:1.2)", [("a", 1.2)]),
    ("((b))", [("b", UP * UP)]),  # 1.21
    ("[c]", [("c", DOWN)]),
    ("[[c]]", [("c", DOWN * DOWN)]),
    ("x (y) z", [("x ", 1.0), ("y", UP), (" z", 1.0)]),
    ("[(d:2)]", [("d", 2 * DOWN)]),
    ("((e:1.5))", [("e", 1.5 * UP)]),
    ("(f:0.5) g", [("f", 0.5), (" g", 1.0)]),
    (r"\(literal\) \[too\]", [("(literal) [too]", 1.0)]),
    (r"back\\slash", [("back\\slash", 1.0)]),
    (r"lone\ backslash", [("lone backslash", 1.0)]),  # dropped, as in sd-scripts
    ("(open to the end", [("open to the end", UP)]),
    ("[open", [("open", DOWN)]),
    ("stray) and] marks", [("stray) and] marks", 1.0)]),
    ("time 10:30, ratio:1.2) x", [("time 10:30, ratio:1.2) x", 1.0)]),  # no bracket open: plain text
    ("(a)(b)", [("ab", UP)]),  # neighbours of the same weight join
    ("", [("", 1.0)]),
    # A1111's own example
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [("a ", 1.0), ("house", 1.3 * UP * UP), (" ", UP), ("on", 1.0), (" a ", UP), ("hill", 0.55),
      (", sun, ", UP), ("sky", UP ** 4), (".", UP)]),
])
def test_emphasis_is_parsed_as_a1111_and_sd_scripts_read_it(caption, parts):
    got = parse_emphasis(caption)
    assert [t for t, _ in got] == [t for t, _ in parts]
    assert [w for _, w in got] == pytest.approx([w for _, w in parts], rel=1e-12)


def test_token_weights_spread_each_parts_weight_over_its_tokens_and_cut_at_the_limit():
    parts = [("a b ", 1.0), ("c", 1.5), (" d", 1.0)]
    ids, weights = token_weights(parts, [[1, 2], [3], [4]], limit=10)
    assert ids == [1, 2, 3, 4] and weights == [1.0, 1.0, 1.5, 1.0]
    assert token_weights(parts, [[1, 2], [3], [4]], limit=3) == ([1, 2, 3], [1.0, 1.0, 1.5])


def test_a_separator_inside_brackets_is_found():
    assert separator_inside_brackets("1girl, (red hair, blue eyes:1.2)", ",")
    assert separator_inside_brackets("[a, b]", ",")
    assert not separator_inside_brackets("1girl, (red hair:1.2), blue eyes", ",")
    assert not separator_inside_brackets(r"\(a, b\)", ",")


# ---------------------------------------------------------------- the setting
def test_weighted_captions_is_a_setting_and_a_kohya_json_carries_it():
    from lora_studio.config.kohya_import import convert

    assert "weighted_captions" not in UNSUPPORTED and BY_NAME["weighted_captions"].default is False
    assert build_config({"weighted_captions": True}).weighted_captions is True
    assert convert({"weighted_captions": True}).settings["weighted_captions"] is True
    extra = convert({"additional_parameters": "--weighted_captions"})
    assert extra.settings["weighted_captions"] is True


# ---------------------------------------------------------------- the embeddings
@pytest.fixture(scope="module")
def sd1():
    from transformers import CLIPTextConfig, CLIPTextModel

    from lora_studio.models.sd1 import SD1
    from lora_studio.models.tiny import TINY_TEXT_ENCODER
    from lora_studio.models.tokenizer import clip_tokenizer

    torch.manual_seed(0)
    te = CLIPTextModel(CLIPTextConfig(**TINY_TEXT_ENCODER)).eval()
    return SD1()._components(None, None, [te], [clip_tokenizer()], "tiny")


@pytest.fixture(scope="module")
def sdxl():
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from lora_studio.models.sdxl import SDXL
    from lora_studio.models.tiny import TINY_SDXL_TEXT_ENCODER_1, TINY_SDXL_TEXT_ENCODER_2
    from lora_studio.models.tokenizer import clip_tokenizer

    torch.manual_seed(1)
    te1 = CLIPTextModel(CLIPTextConfig(**TINY_SDXL_TEXT_ENCODER_1)).eval()
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(**TINY_SDXL_TEXT_ENCODER_2)).eval()
    return SDXL()._components(None, None, [te1, te2], [clip_tokenizer(), clip_tokenizer(pad_token="!")], "tiny")


def _encode(c, captions, weighted, clip_skip=1, max_token_length=75):
    with torch.no_grad():
        options = {"clip_skip": clip_skip, "max_token_length": max_token_length}
        return c.family.encode_prompt(c, captions, "cpu", options, weighted=weighted)


LONG = ", ".join(["tag"] * 45)  # 89 tokens: past the first 75-token chunk
PLAIN = ["a cat, red hair", "", "one: two", LONG, ", ".join(["tag"] * 120)]  # the last one is cut at 150 / 225


@pytest.mark.parametrize("clip_skip, max_token_length", [(1, 75), (2, 150), (1, 225)])
def test_captions_without_emphasis_encode_exactly_as_without_the_setting(sd1, clip_skip, max_token_length):
    plain = _encode(sd1, PLAIN, False, clip_skip, max_token_length)["encoder_hidden_states"]
    weighted = _encode(sd1, PLAIN, True, clip_skip, max_token_length)["encoder_hidden_states"]
    assert torch.equal(plain, weighted)


@pytest.mark.parametrize("pad", ["<|endoftext|>", "!"])  # SD1.x, and SD2.x / SDXL's second encoder
def test_without_emphasis_the_token_ids_are_the_tokenizers(pad):
    from lora_studio.models.clip import weighted_token_ids
    from lora_studio.models.tokenizer import clip_tokenizer

    tok = clip_tokenizer(pad_token=pad)
    for total in (77, 152):
        ids, weights = weighted_token_ids(tok, PLAIN, total)
        expected = tok(PLAIN, padding="max_length", truncation=True, max_length=total, return_tensors="pt").input_ids
        assert weights is None and torch.equal(ids, expected)


def test_weighted_tokens_are_the_plain_encoding_scaled_by_their_weight(sd1):
    from lora_studio.models.clip import weighted_token_ids

    tok = sd1.tokenizers[0]
    ids, weights = weighted_token_ids(tok, ["a (red:1.5) [cat]"], 77)
    assert torch.equal(ids, tok(["a red cat"], padding="max_length", max_length=77, return_tensors="pt").input_ids)
    assert weights[0, :5].tolist() == pytest.approx([1.0, 1.0, 1.5, DOWN, 1.0])  # start, a, red, cat, end
    assert torch.all(weights[0, 5:] == 1.0)
    plain = _encode(sd1, ["a red cat", "a red cat"], False)["encoder_hidden_states"]
    got = _encode(sd1, ["a (red:1.5) [cat]", "a red cat"], True)["encoder_hidden_states"]
    expected = plain.clone()
    expected[0, 2] *= 1.5
    expected[0, 3] *= DOWN  # no rescaling of the mean afterwards (sd-scripts' training does none)
    assert torch.allclose(got, expected, atol=1e-6, rtol=0)
    assert torch.equal(got[1], plain[1])  # the other caption of the batch is untouched


def test_long_captions_weight_the_token_in_its_chunk(sd1):
    tok = sd1.tokenizers[0]
    text = LONG + ", blue"
    ids = tok([text], padding="max_length", max_length=152, return_tensors="pt").input_ids[0]
    blue = tok("blue", add_special_tokens=False).input_ids[0]
    position = int((ids == blue).nonzero()[0])
    assert position > 76  # in the second chunk
    for clip_skip in (1, 2):
        plain = _encode(sd1, [text], False, clip_skip, 150)["encoder_hidden_states"]
        got = _encode(sd1, [LONG + ", ((blue))"], True, clip_skip, 150)["encoder_hidden_states"]
        expected = plain.clone()
        expected[0, position] *= UP * UP
        assert torch.allclose(got, expected, atol=1e-6, rtol=0)


def test_sdxl_weights_both_encoders_hidden_states_but_not_the_pooled_output(sdxl):
    plain_batch = _encode(sdxl, PLAIN, False, max_token_length=150)
    same = _encode(sdxl, PLAIN, True, max_token_length=150)
    assert all(torch.equal(plain_batch[k], same[k]) for k in plain_batch)
    plain = _encode(sdxl, ["a red cat"], False)
    got = _encode(sdxl, ["a (red:1.5) [cat]"], True)
    expected = plain["encoder_hidden_states"].clone()
    expected[0, 2] *= 1.5  # both encoders' features: the whole 2048-wide (here 96-wide) row
    expected[0, 3] *= DOWN
    assert torch.allclose(got["encoder_hidden_states"], expected, atol=1e-6, rtol=0)
    assert torch.equal(got["text_embeds"], plain["text_embeds"])


# ---------------------------------------------------------------- training: each step and the cache
def test_the_training_step_and_the_text_encoder_cache_encode_with_weights(sd1, tmp_path):
    from lora_studio.training.build import Trained, cache_text_encoder_outputs
    from lora_studio.training.precision import Precision
    from lora_studio.training.step import BatchLoss
    from lora_studio.training.te_cache import cached_condition, te_fingerprint

    caption = "a (red:1.5) [cat]"
    expected = _encode(sd1, [caption], True)["encoder_hidden_states"]
    precision = Precision("no", torch.float32)
    cfg = build_config({"weighted_captions": True, "output_dir": str(tmp_path)})
    loss = BatchLoss(sd1, None, cfg, torch.device("cpu"), precision, False, None)
    with torch.no_grad():
        assert torch.equal(loss.condition({"captions": [caption]})["encoder_hidden_states"], expected)

    subset = SimpleNamespace(shuffle_caption=False, caption_dropout_rate=0, caption_tag_dropout_rate=0,
                             caption_dropout_every_n_epochs=0, enable_wildcard=False, token_warmup_step=0)
    data = SimpleNamespace(items=[SimpleNamespace(path=tmp_path / "1.png")], datasets=[SimpleNamespace(
        subsets=[subset])], caption_for=lambda *_: caption)
    accelerator = SimpleNamespace(num_processes=1, is_main_process=True, is_local_main_process=True)
    cache = cache_text_encoder_outputs(sd1, data, cfg.replace(cache_text_encoder_outputs=True),
                                       Trained(unet=True, text_encoder=False), torch.device("cpu"), precision,
                                       accelerator)
    assert torch.allclose(cached_condition(cache, [caption], "cpu")["encoder_hidden_states"], expected)
    # a cache on disk from a run without the setting is not reused (and an older cache without it stays valid)
    tes, options = sd1.text_encoders, {"clip_skip": 1, "max_token_length": 75}
    assert te_fingerprint(tes, options, True) != te_fingerprint(tes, options) == te_fingerprint(tes, options, False)
