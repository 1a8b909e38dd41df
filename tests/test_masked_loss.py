"""Masked loss (masked_loss with mask images in conditioning_data_dir, alpha_mask), random_crop and color_aug, and
sd-scripts' fine-tuning metadata file (in_json / metadata_file), as sd-scripts defines them."""

from __future__ import annotations

import colorsys
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import base_settings, run_cli, write_config
from lora_studio.config import build_config
from lora_studio.data.augment import color_aug
from lora_studio.data.dataset import TrainingData
from lora_studio.data.latent_cache import build_latent_cache
from lora_studio.data.loader import EpochBatches
from lora_studio.data.sources import datasets_from_config
from lora_studio.errors import UserError
from lora_studio.models.ddpm import DDPMObjective
from lora_studio.models.loading import load_components
from lora_studio.training.loss import denoising_loss

SQUARE = (40, 8, 72, 40)  # left, top, right, bottom of the subject in a 128x64 picture


def _picture(path: Path, alpha: bool = False, size=(128, 64)) -> None:
    """Black picture with a red square (the subject); with ``alpha`` only the square is opaque."""
    rgba = np.zeros((size[1], size[0], 4), dtype=np.uint8)
    rgba[..., 3] = 0 if alpha else 255
    left, top, right, bottom = SQUARE
    rgba[top:bottom, left:right] = (255, 0, 0, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgba if alpha else rgba[..., :3], "RGBA" if alpha else "RGB").save(path)


def _mask(path: Path, size=(128, 64)) -> None:
    grey = np.zeros((size[1], size[0]), dtype=np.uint8)
    left, top, right, bottom = SQUARE
    grey[top:bottom, left:right] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grey, "L").save(path)


def _data(root: Path, **settings) -> TrainingData:
    cfg = build_config({"train_data_dir": str(root / "img"), "resolution": "64", **settings})
    return TrainingData(datasets_from_config(cfg), 1.0, 7)


def _pooled_subject(pixels: np.ndarray) -> np.ndarray:
    """Where the red square is in a drawn picture, averaged over 8x8 blocks (the latent pixels)."""
    red = ((pixels[0] > 0) & (pixels[1] < 0)).astype(np.float32)  # red, not the black or white background
    return red.reshape(red.shape[0] // 8, 8, red.shape[1] // 8, 8).mean(axis=(1, 3))


@pytest.mark.parametrize("source", ["mask_file", "alpha"])
def test_a_mask_follows_its_image_through_crop_random_crop_and_flip(tmp_path, source):
    _picture(tmp_path / "img/1_x/a.png", alpha=source == "alpha")
    if source == "mask_file":
        _mask(tmp_path / "masks/1_x/a.png")
        data = _data(tmp_path, masked_loss=True, conditioning_data_dir=str(tmp_path / "masks"), random_crop=True)
    else:
        data = _data(tmp_path, alpha_mask=True, random_crop=True)
    assert data.items[0].bucket == (64, 64) and data.uses_masks
    seen = set()
    for draw in range(12):
        rng = data.draw_rng(0, 1, (0, draw, 0))
        origin = data.crop_origin(0, rng)
        seen.add(origin)
        for flip in (False, True):
            pixels = data.pixels(0, flip, origin, rng)
            assert np.array_equal(data.mask(0, flip, origin), _pooled_subject(pixels))
            h, w, top, left, th, tw = data.size_conditioning(0, flip, origin)
            assert (h, w, top, th, tw) == (64, 128, 0, 64, 64)
            assert left == (128 - 64 - origin[0] if flip else origin[0])  # a flipped crop is mirrored
    assert len(seen) > 3 and all(o[1] == 0 for o in seen)  # random_crop: the spare width is cut at random places
    centre = data.crop_origin(0)
    assert centre == (32, 0) and np.array_equal(data.mask(0, False), _pooled_subject(data.pixels(0, False)))


def test_images_without_masks_train_whole_and_mask_names_are_checked(tmp_path):
    _picture(tmp_path / "img/1_x/a.png")
    _picture(tmp_path / "img/1_x/b.png")
    _mask(tmp_path / "masks/a.png")
    with pytest.raises(UserError, match=r"no mask for 1 image\(s\) of .*1_x: b.png"):
        _data(tmp_path, masked_loss=True, conditioning_data_dir=str(tmp_path / "masks"))
    _mask(tmp_path / "masks/b.png")
    _mask(tmp_path / "masks/c.png")
    with pytest.raises(UserError, match=r"1 mask\(s\) in conditioning_data_dir without a training image .*c.png"):
        _data(tmp_path, masked_loss=True, conditioning_data_dir=str(tmp_path / "masks"))
    (tmp_path / "masks/c.png").unlink()
    Image.new("L", (50, 50)).save(tmp_path / "masks/b.png")
    data = _data(tmp_path, masked_loss=True, conditioning_data_dir=str(tmp_path / "masks"))
    with pytest.raises(UserError, match=r"mask .*b.png is 50x50 but its image .*b.png is 128x64"):
        data.mask(1, False)
    # mask images count only with masked_loss (as sd-scripts); an image with no mask source trains whole
    plain = _data(tmp_path, conditioning_data_dir=str(tmp_path / "masks"))
    assert not plain.uses_masks
    opaque = _data(tmp_path, alpha_mask=True)  # alpha_mask on images without transparency: all ones
    assert opaque.uses_masks and np.array_equal(opaque.mask(0, False), np.ones((8, 8), np.float32))


def test_masked_pixels_do_not_change_the_loss(tiny_models, monkeypatch):
    """sd-scripts' apply_masked_loss: each latent pixel's loss times its mask, then the mean over all pixels."""
    components = load_components(str(tiny_models["single"]), None, False)
    objective = DDPMObjective(DDPMScheduler.from_config(components.scheduler_config))
    g = torch.Generator().manual_seed(0)
    latents, noise = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    t, weights = torch.tensor([50, 800]), torch.tensor([1.0, 0.5])
    masks = torch.zeros(2, 1, 8, 8)
    masks[0, :, 2:6, 1:5] = 1.0
    masks[1, :, :, 4:] = 0.25
    with torch.no_grad():
        cond = components.family.encode_prompt(components, ["a", "b"], "cpu", {"clip_skip": 1, "max_token_length": 75})
        pred, target = objective.prediction_and_target(components, latents, noise, t, cond)
        got = denoising_loss(components, objective, latents, cond, weights, noise, t, masks=masks)
        by_hand = (((pred - target) ** 2 * masks).mean(dim=(1, 2, 3)) * weights).mean()
        assert float(got) == pytest.approx(float(by_hand), rel=1e-5)
        unmasked = denoising_loss(components, objective, latents, cond, weights, noise, t)
        assert float(unmasked) != pytest.approx(float(got), rel=1e-3)

        real = DDPMObjective.prediction_and_target

        def scribbled(self, *args):  # the real prediction, with the masked-out pixels changed wildly
            p, q = real(self, *args)
            hidden = masks.expand_as(p) == 0
            return torch.where(hidden, p + 50.0, p), torch.where(hidden, q - 20.0, q)

        monkeypatch.setattr(DDPMObjective, "prediction_and_target", scribbled)
        again = denoising_loss(components, objective, latents, cond, weights, noise, t, masks=masks)
    assert float(again) == pytest.approx(float(got), rel=1e-6)


def test_the_latent_cache_keeps_the_masks(tmp_path):
    _picture(tmp_path / "img/1_x/a.png", alpha=True)
    data = _data(tmp_path, alpha_mask=True, flip_aug=True)

    def encode(pixels):
        return pixels[:, :1, ::8, ::8] * 2

    cache = build_latent_cache(data, encode, "v1", True, True, tmp_path / "fallback", show_progress=False)
    for flip in (False, True):
        assert torch.equal(cache.masks[(0, flip)], torch.from_numpy(data.mask(0, flip)))
    assert torch.equal(cache.masks[(0, True)], cache.masks[(0, False)].flip(-1))
    files = sorted((tmp_path / "img/1_x/.lora_studio_cache").iterdir())
    assert len(files) == 2 and all(set(load_file(str(f))) == {"latent", "mask"} for f in files)
    again = build_latent_cache(_data(tmp_path, alpha_mask=True, flip_aug=True), encode, "v1", True, True,
                               tmp_path / "fallback", show_progress=False)
    assert torch.equal(again.masks[(0, True)], cache.masks[(0, True)])
    assert len(list((tmp_path / "img/1_x/.lora_studio_cache").iterdir())) == 2  # read back, not re-made
    batches = EpochBatches(data, 0, 1, cache)
    batches.use_epoch(1)
    batch = batches[0]
    flip = batches.batches()[0][0][1]
    assert batch["masks"].shape == (1, 1, 8, 8) and torch.equal(batch["masks"][0, 0], cache.masks[(0, flip)])
    unmasked = build_latent_cache(_data(tmp_path), encode, "v1", True, True, tmp_path / "fallback",
                                  show_progress=False)
    assert not unmasked.masks
    assert len(list((tmp_path / "img/1_x/.lora_studio_cache").iterdir())) == 3  # without masks: its own entry


def test_color_aug_is_sd_scripts_hue_shift_or_gamma():
    rgb = np.array([[[255, 0, 0], [100, 150, 200]]], dtype=np.uint8)
    outcomes = {"same": 0, "hue": 0, "gamma": 0}
    for seed in range(300):
        rng, mirror = random.Random(seed), random.Random(seed)
        out = color_aug(rgb, rng)
        if mirror.random() > 0.33:
            assert np.array_equal(out, rgb)
            outcomes["same"] += 1
        elif mirror.random() > 0.5:
            shift = mirror.uniform(-8, 8) * 2  # degrees
            hue = colorsys.rgb_to_hsv(*(out[0, 0] / 255.0))[0] * 360
            hue = hue - 360 if hue > 180 else hue
            assert hue == pytest.approx(shift, abs=2.0)  # pure red (hue 0) turned by the shift (8-bit hue steps)
            outcomes["hue"] += 1
        else:
            gamma = mirror.uniform(0.95, 1.05)
            assert np.array_equal(out, np.clip(rgb.astype(np.float64) ** gamma, 0, 255).astype(np.uint8))
            outcomes["gamma"] += 1
    assert outcomes["same"] > 150 and outcomes["hue"] > 30 and outcomes["gamma"] > 30


def test_metadata_file_captions_and_tags(tmp_path):
    for name in ("a", "b"):
        _picture(tmp_path / "pics" / f"{name}.png")
    meta = {"a": {"caption": "a red square", "tags": "red, square"}, "b": {"tags": "square"}}
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    cfg = build_config({"train_data_dir": str(tmp_path / "pics"), "in_json": str(tmp_path / "meta.json"),
                        "dataset_repeats": 3, "resolution": "64"})
    data = TrainingData(datasets_from_config(cfg), 1.0, 0)
    assert [(it.path.name, it.caption) for it in data.items] == [("a.png", "a red square,red, square"),
                                                                 ("b.png", "square")]
    assert data.num_train_images == 6
    # the same file in a dataset TOML, with its path relative to the TOML
    (tmp_path / "ds.toml").write_text('[[datasets]]\n[[datasets.subsets]]\nimage_dir = "pics"\n'
                                      'metadata_file = "meta.json"\ncaption_separator = ";"\n')
    toml = TrainingData(datasets_from_config(build_config({"dataset_config": str(tmp_path / "ds.toml"),
                                                           "resolution": "64"})), 1.0, 0)
    assert toml.items[0].caption == "a red square;red, square"
    meta["c"] = {"caption": "gone"}
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match=r"meta.json: no image found in .*pics for 1 entry: c"):
        TrainingData(datasets_from_config(cfg), 1.0, 0)


def test_a_masked_run_with_random_crop_and_color_aug(tiny_models, tmp_path):
    """The real CLI: masks from conditioning_data_dir, latent caching turned off by random_crop / color_aug with a
    message; the metadata_* settings in the file."""
    for i in range(4):
        _picture(tmp_path / f"img/2_sq/{i}.png")
        _mask(tmp_path / f"masks/2_sq/{i}.png")
    out = tmp_path / "out"
    settings = base_settings(tiny_models["single"], tmp_path / "img", out, max_train_steps=2, masked_loss=True,
                             conditioning_data_dir=str(tmp_path / "masks"), random_crop=True, color_aug=True,
                             enable_bucket=True, min_bucket_reso=64, max_bucket_reso=128)
    settings.update(metadata_title="Square", metadata_author="me", metadata_license="CC-BY-4.0",
                    metadata_tags="square, red", training_comment="a comment")
    proc = run_cli("train", "--config", str(write_config(tmp_path / "masked.toml", settings)))
    assert "latent caching is off: color_aug / random_crop" in proc.stderr
    with safe_open(str(out / "test_lora.safetensors"), "pt") as f:
        meta = f.metadata()
    # sd-scripts' metadata_* settings in the model-spec metadata (the comment is the description when none is set)
    assert (meta["modelspec.title"], meta["modelspec.author"], meta["modelspec.license"], meta["modelspec.tags"],
            meta["modelspec.description"]) == ("Square", "me", "CC-BY-4.0", "square, red", "a comment")
    assert not (tmp_path / "img/2_sq/.lora_studio_cache").exists()
