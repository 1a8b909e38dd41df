"""Data: folder convention, dataset TOML, images read as people see them, captions, buckets, latent cache."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lora_studio.config import build_config
from lora_studio.data.buckets import bucket_resolutions, choose_bucket, fit_to_bucket
from lora_studio.data.captions import read_caption, vary_caption
from lora_studio.data.dataset import TrainingData, shard_batches
from lora_studio.data.images import load_rgb
from lora_studio.data.latent_cache import build_latent_cache
from lora_studio.data.sources import datasets_from_config
from lora_studio.errors import ConfigError, UserError


def _img(path, color=(200, 10, 10), size=(64, 64), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)
    return path


def _cfg(**kw):
    return build_config({"output_dir": "out", "pretrained_model_name_or_path": "m", **kw})


def test_folder_convention_repeats_and_class_tokens(tmp_path):
    _img(tmp_path / "img" / "10_emi person" / "a.PNG")
    _img(tmp_path / "img" / "10_emi person" / "b.JpEg")
    (tmp_path / "img" / "10_emi person" / "a.txt").write_text("emi person, smiling", encoding="utf-8")
    _img(tmp_path / "img" / "3_style" / "c.webp")
    (tmp_path / "img" / "notes").mkdir()
    _img(tmp_path / "reg" / "1_person" / "r.bmp")
    cfg = _cfg(train_data_dir=str(tmp_path / "img"), reg_data_dir=str(tmp_path / "reg"), resolution="64")
    data = TrainingData(datasets_from_config(cfg), 1.0, seed=0)
    captions = {it.path.name: it.caption for it in data.items}
    assert captions == {"a.PNG": "emi person, smiling", "b.JpEg": "emi person", "c.webp": "style", "r.bmp": "person"}
    assert data.num_train_images == 2 * 10 + 3 and data.num_reg_images == 1
    # one regularisation sample per training sample each epoch
    entries = [e for b in data.plan_epoch(1) for e in b]
    assert len(entries) == 2 * 23


def test_no_numbered_folder_explains_the_convention(tmp_path):
    _img(tmp_path / "img" / "a.png")
    with pytest.raises(UserError) as err:
        datasets_from_config(_cfg(train_data_dir=str(tmp_path / "img")))
    text = str(err.value)
    assert "no '<repeats>_<name>' subfolder" in text and "10_emi person" in text and "1 image(s) directly" in text


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(UserError, match=r"train_data_dir: folder not found: .*nowhere"):
        datasets_from_config(_cfg(train_data_dir=str(tmp_path / "nowhere")))


def test_unreadable_image_is_skipped_and_named(tmp_path):
    folder = tmp_path / "img" / "5_x"
    _img(folder / "good.png")
    (folder / "broken.png").write_bytes(b"not an image at all")
    (folder / "empty.jpg").write_bytes(b"")
    data = TrainingData(datasets_from_config(_cfg(train_data_dir=str(tmp_path / "img"), resolution="64")), 1.0, 0)
    assert [it.path.name for it in data.items] == ["good.png"]
    assert sorted(p.name for p, _ in data.skipped) == ["broken.png", "empty.jpg"]
    assert "broken.png" in data.summary()


def test_dataset_toml_two_subsets_with_inheritance(tmp_path):
    _img(tmp_path / "a" / "1.png", size=(64, 96))
    _img(tmp_path / "b" / "2.png")
    toml = tmp_path / "dataset.toml"
    toml.write_text("[general]\nshuffle_caption = true\ncaption_extension = '.caption'\nkeep_tokens = 1\n"
                    "[[datasets]]\nresolution = 64\nbatch_size = 3\nenable_bucket = true\nmin_bucket_reso = 32\n"
                    "max_bucket_reso = 128\nbucket_reso_steps = 32\n"
                    "  [[datasets.subsets]]\n  image_dir = 'a'\n  class_tokens = 'aaa girl'\n  num_repeats = 4\n"
                    "  [[datasets.subsets]]\n  image_dir = 'b'\n  num_repeats = 2\n  keep_tokens = 0\n  is_reg = true\n")
    specs = datasets_from_config(_cfg(dataset_config=str(toml)))
    assert len(specs) == 1 and specs[0].batch_size == 3 and specs[0].resolution == (64, 64)
    a, b = specs[0].subsets
    assert (a.num_repeats, a.class_tokens, a.keep_tokens, a.shuffle_caption, a.caption_extension) == \
        (4, "aaa girl", 1, True, ".caption")
    assert (b.num_repeats, b.keep_tokens, b.is_reg) == (2, 0, True)
    data = TrainingData(specs, 1.0, 0)
    buckets = {it.path.name: it.bucket for it in data.items}
    assert buckets["2.png"] == (64, 64)
    w, h = buckets["1.png"]  # portrait image, portrait bucket within the 64x64 area
    assert w < h and w * h <= 64 * 64 and w % 32 == 0 and h % 32 == 0


def test_dataset_toml_typo_is_named(tmp_path):
    toml = tmp_path / "d.toml"
    toml.write_text("[[datasets]]\n  [[datasets.subsets]]\n  image_dir = '.'\n  num_repeat = 3\n")
    with pytest.raises(ConfigError, match="unknown key 'num_repeat'.*Did you mean 'num_repeats'"):
        datasets_from_config(_cfg(dataset_config=str(toml)))


def test_dataset_toml_mistakes_people_make_get_a_message_not_a_traceback(tmp_path):
    from lora_studio.config import load_config

    lone = tmp_path / "lone.toml"
    lone.write_text("[[datasets.subsets]]\nimage_dir = '.'\nnum_repeats = 3\n")
    with pytest.raises(ConfigError, match=r"\[\[datasets.subsets\]\] must follow a \[\[datasets\]\] line"):
        datasets_from_config(_cfg(dataset_config=str(lone)))
    good = tmp_path / "dataset.toml"
    good.write_text("[general]\nshuffle_caption = true\n[[datasets]]\n  [[datasets.subsets]]\n  image_dir = '.'\n")
    with pytest.raises(ConfigError, match=r"is a dataset config .*set dataset_config = .*dataset.toml"):
        load_config(good)  # given to --config by mistake


def test_a_relative_image_dir_is_read_from_the_working_folder_as_sd_scripts_does(tmp_path, monkeypatch, caplog):
    work, configs = tmp_path / "work", tmp_path / "configs"
    _img(work / "chars" / "1.png")
    _img(configs / "chars" / "2.png")
    _img(configs / "only_here" / "3.png")
    toml = configs / "dataset.toml"
    monkeypatch.chdir(work)
    toml.write_text("[[datasets]]\nresolution = 64\n  [[datasets.subsets]]\n  image_dir = 'chars'\n")
    with caplog.at_level("WARNING"):
        (spec,) = datasets_from_config(_cfg(dataset_config=str(toml)))
    assert spec.subsets[0].image_dir == work / "chars"  # the working folder wins, as in sd-scripts
    assert "exists both in the working folder" in caplog.text and str(configs / "chars") in caplog.text
    toml.write_text("[[datasets]]\nresolution = 64\n  [[datasets.subsets]]\n  image_dir = 'only_here'\n")
    assert datasets_from_config(_cfg(dataset_config=str(toml)))[0].subsets[0].image_dir == configs / "only_here"
    toml.write_text("[[datasets]]\nresolution = 64\n  [[datasets.subsets]]\n  image_dir = 'nowhere'\n")
    with pytest.raises(UserError, match=f"image_dir not found: {work / 'nowhere'} or {configs / 'nowhere'}"):
        datasets_from_config(_cfg(dataset_config=str(toml)))


def test_images_read_as_people_see_them(tmp_path):
    # EXIF orientation 6 (rotate 90 CW): a 40x20 stored image is shown 20x40
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (40, 20), (0, 255, 0)).save(tmp_path / "rot.jpg", exif=exif.tobytes())
    assert load_rgb(tmp_path / "rot.jpg").size == (20, 40)
    # transparency becomes white, not black
    Image.new("RGBA", (8, 8), (255, 0, 0, 0)).save(tmp_path / "clear.png")
    assert load_rgb(tmp_path / "clear.png").getpixel((0, 0)) == (255, 255, 255)
    # 16-bit greyscale keeps its brightness
    Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16)).save(tmp_path / "grey16.png")
    assert abs(load_rgb(tmp_path / "grey16.png").getpixel((0, 0))[0] - 128) <= 1
    # CMYK converted to RGB
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    r, g, b = load_rgb(tmp_path / "cmyk.jpg").getpixel((4, 4))
    assert r > 200 and g < 60 and b < 60
    # palette image with a transparent index
    pal = Image.new("P", (8, 8), 0)
    pal.putpalette([0, 0, 0] * 256)
    pal.save(tmp_path / "pal.png", transparency=0)
    assert load_rgb(tmp_path / "pal.png").getpixel((0, 0)) == (255, 255, 255)


def test_caption_encodings(tmp_path):
    cases = {"bom.txt": "\ufeffemi, 日本語".encode("utf-8"), "u16.txt": "emi, ü".encode("utf-16"),
             "sjis.txt": "エミ, 笑顔".encode("cp932"), "w1252.txt": "café, naïve".encode("cp1252")}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    assert read_caption(tmp_path / "bom.txt") == "emi, 日本語"
    assert read_caption(tmp_path / "u16.txt") == "emi, ü"
    assert read_caption(tmp_path / "sjis.txt") == "エミ, 笑顔"
    assert read_caption(tmp_path / "w1252.txt") == "café, naïve"


def test_caption_shuffle_keeps_tokens_and_drops():
    import random

    from lora_studio.data.sources import SubsetSpec

    def rules(**kw):
        return SubsetSpec(image_dir=Path("."), **kw)
    rng = random.Random(0)
    cap = "emi, red hair, smile, outdoors, hat"
    seen = {vary_caption(cap, rng, rules(shuffle_caption=True, keep_tokens=1)) for _ in range(50)}
    assert len(seen) > 5 and all(s.startswith("emi, ") for s in seen)
    assert all(sorted(s.split(", ")) == sorted(cap.split(", ")) for s in seen)
    assert vary_caption(cap, rng, rules(caption_dropout_rate=1.0)) == ""
    assert vary_caption(cap, rng, rules(keep_tokens=2, caption_tag_dropout_rate=1.0)) == "emi, red hair"


def test_buckets():
    buckets = bucket_resolutions((512, 512), 256, 1024, 64)
    assert (512, 512) in buckets and (768, 320) in buckets and all(w * h <= 512 * 512 for w, h in buckets)
    assert choose_bucket((1200, 800), (512, 512), True, buckets, 64, False) == (640, 384)
    assert choose_bucket((200, 100), (512, 512), True, buckets, 64, True) == (192, 64)
    assert choose_bucket((1200, 800), (512, 512), False, buckets, 64, False) == (512, 512)
    img = fit_to_bucket(Image.new("RGB", (1200, 800)), (640, 384))
    assert img.size == (640, 384)


def test_flip_and_shards_cover_every_batch(tmp_path):
    for i in range(5):
        _img(tmp_path / "img" / "1_x" / f"{i}.png")
    data = TrainingData(datasets_from_config(_cfg(train_data_dir=str(tmp_path / "img"), resolution="64",
                                                  flip_aug=True)), 1.0, 0)
    batches = data.plan_epoch(3)
    assert data.plan_epoch(3) == batches and data.plan_epoch(4) != batches
    a, b = shard_batches(batches, 0, 2), shard_batches(batches, 1, 2)
    assert len(a) == len(b) == 3 and {tuple(x) for x in a + b} >= {tuple(x) for x in batches}
    pixels = data.pixels(0, False)
    assert pixels.shape == (3, 64, 64) and np.array_equal(data.pixels(0, True), pixels[:, :, ::-1])


def test_latent_cache_is_keyed_by_image_bucket_and_vae(tmp_path):
    folder = tmp_path / "img" / "1_x"
    _img(folder / "a.png", color=(10, 20, 30))
    calls = []

    def encode(pixels):
        calls.append(len(pixels))
        return pixels[:, :1, ::8, ::8] * 2

    def cache(vae_id="v1", res="64"):
        data = TrainingData(datasets_from_config(_cfg(train_data_dir=str(tmp_path / "img"), resolution=res)), 1, 0)
        return build_latent_cache(data, encode, vae_id, True, True, tmp_path / "fallback", show_progress=False)

    first = cache()
    assert len(calls) == 1 and len(list((folder / ".lora_studio_cache").iterdir())) == 1
    again = cache()
    assert len(calls) == 1 and torch.equal(first[(0, False)], again[(0, False)])  # reused
    cache(vae_id="v2")
    assert len(calls) == 2  # another VAE never reuses
    cache(res="128")
    assert len(calls) == 3  # another resolution never reuses
    _img(folder / "a.png", color=(90, 90, 90))
    changed = cache()
    assert len(calls) == 4 and not torch.equal(changed[(0, False)], first[(0, False)])  # changed image


def test_caption_options_change_the_caption_as_sd_scripts_documents():
    """caption_prefix/suffix, caption_separator, keep_tokens_separator, secondary_separator, enable_wildcard and
    caption_dropout_every_n_epochs, with fixed seeds."""
    import random as _random

    from lora_studio.data.captions import vary_caption
    from lora_studio.data.sources import SubsetSpec

    def rules(**kw):
        return SubsetSpec(image_dir=Path("."), **kw)

    def many(caption, r, n=200, epoch=1, lines=None):
        return [vary_caption(caption, _random.Random(i), r, epoch, lines) for i in range(n)]

    assert vary_caption("emi, smile", _random.Random(0), rules(caption_prefix="lsdemo,", caption_suffix="best")) == \
        "lsdemo, emi, smile best"
    # tags between the marks are shuffled; before the first and after the second they stay
    out = many("emi, 1girl ||| smile, red eyes, hat ||| masterpiece", rules(shuffle_caption=True,
                                                                          keep_tokens_separator="|||"))
    assert all(o.startswith("emi, 1girl, ") and o.endswith(", masterpiece") for o in out)
    assert {tuple(sorted(o.split(", ")[2:5])) for o in out} == {("hat", "red eyes", "smile")}
    assert len(set(out)) == 6  # every order of the three middle tags
    # another separator; a secondary separator keeps "long hair;;;blue eyes" together, then becomes the separator
    out = many("a|b|c", rules(shuffle_caption=True, caption_separator="|"))
    assert all(sorted(o.split(", ")) == ["a", "b", "c"] for o in out) and len(set(out)) == 6
    out = many("a, b, c, long hair;;;blue eyes", rules(shuffle_caption=True, secondary_separator=";;;"))
    assert all(sorted(o.split(", ")) == ["a", "b", "c", "long hair,blue eyes"] for o in out)
    # wildcards: {a|b} picks one; {{ }} are literal; several lines give one of them
    picks = set(many("{red|blue} disc, {{x}}", rules(enable_wildcard=True)))
    assert picks == {"red disc, {x}", "blue disc, {x}"}
    assert set(many("first", rules(enable_wildcard=True), lines=["first", "second"])) == {"first", "second"}
    assert set(many("first", rules(), lines=["first", "second"])) == {"first"}  # only with enable_wildcard
    every = rules(caption_dropout_every_n_epochs=2)
    assert many("emi", every, 5, epoch=2) == [""] * 5 and many("emi", every, 5, epoch=3) == ["emi"] * 5


def test_token_warmup_grows_the_caption_over_the_steps(tmp_path):
    """sd-scripts' token warm-up: floor(step x (tags - min) / warmup_steps) + min tags (after keep_tokens) until
    token_warmup_step; a value below 1 is that share of the run's steps. The loader counts optimizer steps."""
    import random as _random

    from lora_studio.data.captions import vary_caption
    from lora_studio.data.loader import EpochBatches
    from lora_studio.data.sources import SubsetSpec

    caption = "emi, a, b, c, d, e"
    rules = SubsetSpec(image_dir=Path("."), keep_tokens=1, token_warmup_min=1, token_warmup_step=10)

    def tags(step, total=0, r=rules):
        return len(vary_caption(caption, _random.Random(0), r, 1, None, step, total).split(", "))
    assert [tags(s) for s in (0, 2, 5, 9, 10, 50)] == [2, 2, 4, 5, 6, 6]  # emi + floor(s * 4 / 10) + 1 tags
    share = SubsetSpec(image_dir=Path("."), keep_tokens=1, token_warmup_step=0.5)
    assert tags(0, 40, share) == 2 and tags(10, 40, share) == 4 and tags(20, 40, share) == 6  # over 20 steps
    assert vary_caption(caption, _random.Random(0), share, 1, None, 0, 40).startswith("emi, a")  # kept in order

    from lora_studio.demo import write_dataset
    images = write_dataset(tmp_path / "data", count=4, repeats=1)
    (images / "1_lsdemo shape" / "000.txt").write_text("x, a, b, c, d, e, f, g, h, i, j", encoding="utf-8")
    cfg = build_config({"train_data_dir": str(images), "resolution": "64", "output_dir": "o",
                        "pretrained_model_name_or_path": "m", "token_warmup_step": 8, "train_batch_size": 1})
    data = TrainingData(datasets_from_config(cfg), 1.0, 0)
    loader = EpochBatches(data, 0, 1, None, steps_per_epoch=4, accumulation=1, total_steps=12)
    lengths = {}
    for epoch in (1, 3):
        loader.use_epoch(epoch)
        for position in range(len(loader)):
            batch = loader[position]
            lengths.update({(epoch, position): len(c.split(", ")) for c in batch["captions"] if c.startswith("x")})
    assert min(v for (e, _), v in lengths.items() if e == 1) < 11 and all(v == 11 for (e, _), v in lengths.items()
                                                                         if e == 3)
