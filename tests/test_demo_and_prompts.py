"""``lora-studio demo``: the offline flow a newcomer runs first; long prompts encoded in 75-token chunks."""

import torch

from lora_studio.config import load_config
from lora_studio.models.loading import load_components
from lora_studio.training.events import read_events

from conftest import run_cli


def test_demo_writes_a_runnable_project_and_trains(tmp_path):
    folder = tmp_path / "demo"
    run_cli("demo", str(folder), subprocess_=True)
    cfg = load_config(folder / "config.toml")
    assert cfg.pretrained_model_name_or_path.endswith("tiny-sd1.safetensors")
    assert len(list((folder / "img" / "10_lsdemo shape").glob("*.png"))) == 8
    assert (folder / "prompts.txt").is_file()
    run_cli("train", "--config", str(folder / "config.toml"))
    out = folder / "output"
    assert (out / "demo_lora.safetensors").is_file() and (out / "demo_lora-000001.safetensors").is_file()
    assert len(list((out / "sample").glob("*.png"))) == 2
    assert read_events(out / "demo_lora_events.jsonl")[-1]["status"] == "completed"
    again = run_cli("demo", str(folder), check=False)
    assert again.returncode == 2 and "is not empty" in again.stderr  # never writes over a folder


def _encode(c, captions, clip_skip, max_token_length):
    options = {"clip_skip": clip_skip, "max_token_length": max_token_length}
    return c.family.encode_prompt(c, captions, "cpu", options)["encoder_hidden_states"]


def test_long_captions_use_75_token_chunks(tiny_models):
    c = load_components(str(tiny_models["single"]), None, False)
    long_caption = ", ".join(f"tag{i}" for i in range(60))  # well over 75 tokens
    with torch.no_grad():
        short = _encode(c, ["a cat"], 1, 75)
        long = _encode(c, [long_caption, "a cat"], 2, 150)
        longest = _encode(c, [long_caption], 1, 225)
    assert short.shape[1] == 77 and long.shape[1] == 152 and longest.shape[1] == 227
    # the first chunk of a short caption equals its 75-token encoding (same start, same words)
    assert torch.allclose(_encode(c, ["a cat"], 1, 150)[:, :76], short[:, :76], atol=1e-5)
