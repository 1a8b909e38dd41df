"""``lora-studio demo DIR``: a tiny SD1.x model, a synthetic dataset, sample prompts and a config.

Everything is made on the spot (nothing downloaded), so a newcomer can run the whole flow on a CPU in about a minute.
"""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw

from .config import build_config, save_config
from .errors import UserError

DEMO_TOKEN = "lsdemo shape"
DEMO_SIZE = 64


def draw_concept(rng: random.Random, size: int = DEMO_SIZE) -> Image.Image:
    """The demo's concept: a red disc with a yellow ring on a blue background, at a random place and size."""
    img = Image.new("RGB", (size, size), (30, 60, 200))
    draw = ImageDraw.Draw(img)
    radius = rng.randint(size // 6, size // 3)
    cx, cy = rng.randint(radius, size - radius), rng.randint(radius, size - radius)
    draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=(220, 30, 30), outline=(250, 220, 40),
                 width=max(1, size // 32))
    return img


def write_dataset(folder: Path, count: int = 8, repeats: int = 10, seed: int = 0, size: int = DEMO_SIZE) -> Path:
    """``folder/img/<repeats>_lsdemo shape/NNN.png`` (``size`` pixels square) with a caption each; returns
    ``folder/img``."""
    rng = random.Random(seed)
    images = folder / "img" / f"{repeats}_{DEMO_TOKEN}"
    images.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        draw_concept(rng, size).save(images / f"{i:03d}.png")
        (images / f"{i:03d}.txt").write_text(f"{DEMO_TOKEN}, red disc, blue background", encoding="utf-8")
    return folder / "img"


def demo_settings(folder: Path, model: Path) -> dict:
    return {
        "pretrained_model_name_or_path": str(model), "train_data_dir": str(folder / "img"),
        "output_dir": str(folder / "output"), "output_name": "demo_lora", "resolution": str(DEMO_SIZE),
        "train_batch_size": 2, "max_train_epochs": 2, "learning_rate": 1e-3, "network_dim": 4, "network_alpha": 4.0,
        "cache_latents": True, "save_every_n_epochs": 1, "sample_prompts": str(folder / "prompts.txt"),
        "sample_every_n_epochs": 1, "seed": 42, "logging_dir": str(folder / "log"),
        # 2 of the 8 images held out: the validation loss each epoch, and the best file kept
        "validation_split": 0.25, "save_best": True,
    }


def write_demo(folder: str | Path) -> Path:
    from .models.tiny import build_tiny_sd1, save_single_file

    folder = Path(folder).expanduser().resolve()
    if folder.exists() and any(folder.iterdir()):
        raise UserError(f"demo: {folder} is not empty; choose a new folder")
    folder.mkdir(parents=True, exist_ok=True)
    unet, vae, te, _ = build_tiny_sd1(seed=0)
    model = save_single_file(folder / "model" / "tiny-sd1.safetensors", unet, vae, te)
    write_dataset(folder)
    (folder / "prompts.txt").write_text(
        "# one prompt a line: --n negative, --w/--h size, --d seed, --s steps, --l CFG scale\n"
        f"{DEMO_TOKEN}, red disc, blue background --n blurry --w {DEMO_SIZE} --h {DEMO_SIZE} --d 1 --s 8 --l 7\n",
        encoding="utf-8")
    config = folder / "config.toml"
    save_config(build_config(demo_settings(folder, model)).explicit(), config)
    return config
