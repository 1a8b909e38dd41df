"""``lora-studio caption wd14|blip``: tags and sentences written for a folder of images, with tiny in-process models
(nothing downloaded)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli
from lora_studio.cli import build_parser
from lora_studio.data.images import load_rgb
from lora_studio.dataset_tools.caption_cli import caption_folder
from lora_studio.errors import UserError
from tiny_captioners import TAGS, build_tiny_blip, build_tiny_wd14, tiny_wd14_probabilities

WD14_REPO = "SmilingWolf/wd-v1-4-convnext-tagger-v2"
# The tiny tagger's default captions (general >= 0.35, character >= 0.85, by descending confidence)
RED = "hatsune miku \\(vocaloid\\), long hair, smile, ^_^, hat \\(object\\)"
BLUE = "solo, hat \\(object\\), outdoors, smile"
HALF_TRANSPARENT = "hat \\(object\\), solo, smile"
WIDE_RED = "long hair, smile, hat \\(object\\), ^_^"


@pytest.fixture(scope="module")
def wd14_model(tmp_path_factory):
    return build_tiny_wd14(tmp_path_factory.mktemp("wd14"), size=16)


@pytest.fixture(scope="module")
def blip_model(tmp_path_factory):
    return build_tiny_blip(tmp_path_factory.mktemp("blip"))


def write_images(folder):
    """Solid-colour images: the tiny tagger's input means are known exactly."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), (255, 0, 0)).save(folder / "red.png")  # shrunk 32 -> 16 (BOX)
    Image.new("RGB", (8, 8), (0, 0, 255)).save(folder / "blue.bmp")  # enlarged 8 -> 16 (LANCZOS)
    half = Image.new("RGBA", (16, 16), (0, 0, 0, 0))  # right half transparent black: white once composited
    half.paste((0, 0, 255, 255), (0, 0, 8, 16))
    half.save(folder / "half_transparent.png")
    Image.new("RGB", (32, 16), (255, 0, 0)).save(folder / "wide_red.png")  # padded with white to 32x32, then 16
    return folder


def expected_input_means(rgba: np.ndarray, size: int = 16) -> np.ndarray:
    """The tagger input's [B, G, R] means computed here with numpy: alpha on white, BGR, centred white square, then
    2x2 block means (shrink by 2) or pixel repeats (enlarge by 2) - exact for these images."""
    rgba = rgba.astype(np.float64)
    alpha = rgba[..., 3:4] / 255.0
    rgb = rgba[..., :3] * alpha + 255.0 * (1 - alpha)
    bgr = rgb[..., ::-1]
    h, w = bgr.shape[:2]
    side = max(h, w)
    square = np.full((side, side, 3), 255.0)
    top, left = (side - h) // 2, (side - w) // 2
    square[top:top + h, left:left + w] = bgr
    if side == 2 * size:
        square = square.reshape(size, 2, size, 2, 3).mean(axis=(1, 3))
    elif 2 * side == size:
        square = square.repeat(2, axis=0).repeat(2, axis=1)
    assert square.shape == (size, size, 3)
    return square.mean(axis=(0, 1))


def caption_args(*argv: str):
    return build_parser().parse_args(["caption", *argv])


def read_captions(folder, extension=".txt"):
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(folder.glob(f"*{extension}"))}


def snapshot(folder):
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def test_preprocess_pads_a_centred_white_square_in_bgr():
    from lora_studio.dataset_tools.tagger import preprocess

    pixels = np.zeros((13, 16, 3), np.uint8)
    pixels[..., 0] = 200  # red
    pixels[..., 2] = np.arange(13)[:, None]  # blue: the row number
    out = preprocess(Image.fromarray(pixels), 16)
    assert out.dtype == np.float32 and out.shape == (16, 16, 3)
    assert (out[0] == 255).all() and (out[14:] == 255).all()  # pad 3: 1 row on top, 2 below
    assert (out[1:14, :, 2] == 200).all() and (out[1:14, :, 1] == 0).all()  # BGR: red is channel 2
    assert (out[1:14, 0, 0] == np.arange(13)).all()

    edge = np.zeros((32, 32, 3), np.uint8)
    edge[:, 16:] = 255
    shrunk = preprocess(Image.fromarray(edge), 16)  # BOX: the edge stays sharp (LANCZOS would ring)
    assert (shrunk[:, :8] == 0).all() and (shrunk[:, 8:] == 255).all()
    small = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    enlarged = preprocess(Image.fromarray(small), 16)
    lanczos = Image.fromarray(np.ascontiguousarray(small[:, :, ::-1])).resize((16, 16), Image.Resampling.LANCZOS)
    assert (enlarged == np.asarray(lanczos)).all()


def test_tagger_probabilities_match_numpy(wd14_model, tmp_path):
    from lora_studio.dataset_tools.tagger import WD14Tagger

    folder = write_images(tmp_path / "img")
    names = ["red.png", "blue.bmp", "half_transparent.png", "wide_red.png"]
    images = [load_rgb(folder / n) for n in names]
    expected = np.stack([tiny_wd14_probabilities(expected_input_means(np.asarray(Image.open(folder / n)
                                                                                 .convert("RGBA"))))
                         for n in names])
    tagger = WD14Tagger(wd14_model)
    assert tagger.size == 16 and [label.name for label in tagger.labels] == [t for t, _ in TAGS]
    np.testing.assert_allclose(tagger.probabilities(images), expected, atol=1e-5)

    fixed = WD14Tagger(build_tiny_wd14(tmp_path / "fixed", size=16, batch=1))  # a model exported for 1 image
    np.testing.assert_allclose(fixed.probabilities(images[:3]), expected[:3], atol=1e-5)


def test_wd14_writes_the_tags_above_the_thresholds(wd14_model, tmp_path):
    folder = write_images(tmp_path / "img")
    (folder / "broken.png").write_bytes(b"not an image")
    (folder / ".hidden.png").write_bytes(b"left out")
    _, report = caption_folder(caption_args("wd14", str(folder), "--model_dir", str(wd14_model), "--batch_size", "3"))
    assert read_captions(folder) == {"blue.txt": BLUE + "\n", "half_transparent.txt": HALF_TRANSPARENT + "\n",
                                     "red.txt": RED + "\n", "wide_red.txt": WIDE_RED + "\n"}
    actions = {os.path.basename(r["image"]): r["action"] for r in report["images"]}
    assert actions == {"blue.bmp": "written", "broken.png": "skipped", "half_transparent.png": "written",
                       "red.png": "written", "wide_red.png": "written"}
    assert len(report["warnings"]) == 1 and "broken.png" in report["warnings"][0]
    assert "warning:" in report["text"] and "broken.png" in report["text"]
    frequency = dict(report["tag_frequency"])
    assert frequency["smile"] == 4 and frequency["hat \\(object\\)"] == 4 and frequency["outdoors"] == 1
    assert tuple(report["tag_frequency"][0]) == ("hat \\(object\\)", 4)  # most frequent, then by name

    # the same captions again: nothing rewritten
    before = snapshot(folder)
    _, report = caption_folder(caption_args("wd14", str(folder), "--model_dir", str(wd14_model)))
    assert snapshot(folder) == before
    assert {r["action"] for r in report["images"] if "warning" not in r} == {"unchanged"}


@pytest.mark.parametrize("options, expected", [
    (["--trigger", "lsmiku"], "lsmiku, " + RED),
    (["--undesired_tags", "long_hair, hat \\(object\\)"], "hatsune miku \\(vocaloid\\), smile, ^_^"),
    (["--undesired_tags", "long hair,hat_(object)"], "hatsune miku \\(vocaloid\\), smile, ^_^"),
    (["--always_first_tags", "hat_(object), smile, solo"],
     "hat \\(object\\), smile, hatsune miku \\(vocaloid\\), long hair, ^_^"),
    (["--use_rating_tags", "--trigger", "lsmiku", "--always_first_tags", "smile"],
     "lsmiku, smile, sensitive, hatsune miku \\(vocaloid\\), long hair, ^_^, hat \\(object\\)"),
    (["--use_rating_tags_as_last_tag"], RED + ", sensitive"),
    (["--keep_underscore", "--no_escape_brackets"], "hatsune_miku_(vocaloid), long_hair, smile, ^_^, hat_(object)"),
    (["--general_threshold", "0.6", "--character_threshold", "0.95"], "long hair, smile"),
    (["--caption_separator", ","], RED.replace(", ", ",")),
])
def test_wd14_options(wd14_model, tmp_path, options, expected):
    folder = tmp_path / "img"
    folder.mkdir()
    Image.new("RGB", (32, 32), (255, 0, 0)).save(folder / "red.png")
    caption_folder(caption_args("wd14", str(folder), "--model_dir", str(wd14_model), *options))
    assert (folder / "red.txt").read_text(encoding="utf-8") == expected + "\n"


def test_character_tags_first():
    from lora_studio.dataset_tools.tagger import Label, TagOptions, select_tags

    labels = [Label("general", 9), Label("sensitive", 9), Label("solo", 0), Label("smile", 0),
              Label("kaito_(vocaloid)", 4), Label("hatsune_miku", 4)]
    probs = np.array([0.2, 0.7, 0.99, 0.5, 0.9, 0.95])
    assert select_tags(probs, labels, TagOptions()) == ["solo", "hatsune miku", "kaito \\(vocaloid\\)", "smile"]
    assert select_tags(probs, labels, TagOptions(character_tags_first=True, rating="first")) == \
        ["sensitive", "hatsune miku", "kaito \\(vocaloid\\)", "solo", "smile"]


@pytest.mark.parametrize("mode, expected, action", [
    ("overwrite", RED, "written"),
    ("append", "lsmiku, smile, old tag, hatsune miku \\(vocaloid\\), long hair, ^_^, hat \\(object\\)", "appended"),
    ("skip", "smile, old tag", "skipped"),
])
def test_wd14_modes_on_an_existing_caption(wd14_model, tmp_path, mode, expected, action):
    folder = write_images(tmp_path / "img")
    (folder / "red.txt").write_text("smile, old tag\n", encoding="utf-8")
    trigger = ["--trigger", "lsmiku"] if mode == "append" else []
    _, report = caption_folder(caption_args("wd14", str(folder), "--model_dir", str(wd14_model), "--mode", mode,
                                            *trigger))
    captions = read_captions(folder)
    assert captions["red.txt"] == expected + "\n"
    assert captions["blue.txt"] == ("lsmiku, " if trigger else "") + BLUE + "\n"  # no caption before: written
    record = next(r for r in report["images"] if r["image"].endswith("red.png"))
    assert record == {"image": str(folder / "red.png"), "caption": expected, "old": "smile, old tag",
                      "action": action}


def test_skip_mode_needs_no_model_when_every_image_has_a_caption(tmp_path):
    folder = tmp_path / "img"
    folder.mkdir()
    Image.new("RGB", (32, 32), (255, 0, 0)).save(folder / "red.png")
    (folder / "red.txt").write_text("done\n", encoding="utf-8")
    _, report = caption_folder(caption_args("wd14", str(folder), "--mode", "skip", "--repo_id", "nobody/nothing"))
    assert report["counts"] == {"skipped": 1} and (folder / "red.txt").read_text() == "done\n"


def test_dry_run_writes_nothing_and_lists_the_changes(wd14_model, tmp_path):
    folder = write_images(tmp_path / "img")
    (folder / "red.txt").write_text("old tag\n", encoding="utf-8")
    (folder / "blue.txt").write_text(BLUE + "\n", encoding="utf-8")
    before = snapshot(folder)
    _, report = caption_folder(caption_args("wd14", str(folder), "--model_dir", str(wd14_model), "--dry_run",
                                            "--mode", "append"))
    assert snapshot(folder) == before
    records = {os.path.basename(r["image"]): r for r in report["images"]}
    assert records["red.png"] == {"image": str(folder / "red.png"), "action": "would write", "old": "old tag",
                                  "caption": "old tag, " + RED}
    assert records["blue.bmp"]["action"] == "unchanged"
    assert records["wide_red.png"] == {"image": str(folder / "wide_red.png"), "action": "would write", "old": None,
                                       "caption": WIDE_RED}
    assert f"{folder / 'red.png'}: would write\n  old: old tag\n  new: old tag, {RED}" in report["text"]
    assert "  old: (no caption file)\n  new: " + WIDE_RED in report["text"]
    assert "dry run: nothing written" in report["text"]


def test_recursive_and_caption_extension(wd14_model, tmp_path):
    folder = tmp_path / "img"
    write_images(folder / "sub")
    Image.new("RGB", (32, 32), (255, 0, 0)).save(folder / "top.png")
    caption_folder(caption_args("wd14", str(folder), "--model_dir", str(wd14_model), "--caption_extension",
                                ".caption"))
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.caption")) == ["top.caption"]
    caption_folder(caption_args("wd14", str(folder), "--model_dir", str(wd14_model), "--caption_extension",
                                ".caption", "--recursive"))
    assert (folder / "sub" / "red.caption").read_text(encoding="utf-8") == RED + "\n"
    assert len(list(folder.rglob("*.caption"))) == 5 and not list(folder.rglob("*.txt"))
    with pytest.raises(UserError, match="image extension"):
        caption_folder(caption_args("wd14", str(folder), "--model_dir", str(wd14_model), "--caption_extension",
                                    ".png"))


def test_model_from_the_hugging_face_cache(wd14_model, tmp_path):
    """No --model_dir: the files come from the (here: fake, local) Hub cache, without a download."""
    snapshot_dir = tmp_path / "hub" / "models--test--tiny-wd14" / "snapshots" / ("0" * 40)
    build_tiny_wd14(snapshot_dir)
    (tmp_path / "hub" / "models--test--tiny-wd14" / "refs").mkdir()
    (tmp_path / "hub" / "models--test--tiny-wd14" / "refs" / "main").write_text("0" * 40)
    folder = write_images(tmp_path / "img")
    caption_folder(caption_args("wd14", str(folder), "--repo_id", "test/tiny-wd14"), cache_dir=tmp_path / "hub")
    assert (folder / "red.txt").read_text(encoding="utf-8") == RED + "\n"


def test_missing_model_offline_says_what_to_download_and_where(tmp_path, monkeypatch):
    folder = write_images(tmp_path / "img")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    proc = run_cli("caption", "wd14", str(folder), check=False, timeout=120, subprocess_=True)  # HF_HOME read at import
    assert proc.returncode == 2
    message = " ".join(proc.stderr.split())
    for part in (WD14_REPO, "model.onnx", "selected_tags.csv", f"https://huggingface.co/{WD14_REPO}",
                 "--model_dir FOLDER", "HF_HUB_OFFLINE=1"):
        assert part in message
    assert "Traceback" not in proc.stderr and not list(folder.glob("*.txt"))
    assert not (tmp_path / "hf" / "hub").exists() or not any((tmp_path / "hf" / "hub").rglob("*.onnx"))

    from lora_studio.dataset_tools.captioner import model_spec
    from lora_studio.dataset_tools.model_files import find_model

    with pytest.raises(UserError) as err:
        find_model(model_spec(), None, cache_dir=tmp_path / "empty")
    for part in ("Salesforce/blip-image-captioning-large", "config.json", "model.safetensors",
                 "https://huggingface.co/Salesforce/blip-image-captioning-large", "--model_dir FOLDER"):
        assert part in str(err.value)
    from lora_studio.dataset_tools.tagger import model_spec as wd14_spec

    with pytest.raises(UserError, match="lacks model.onnx, selected_tags.csv"):
        find_model(wd14_spec(WD14_REPO), tmp_path)


def test_cli_with_events_and_report(wd14_model, tmp_path):
    folder = write_images(tmp_path / "img")
    events, report = tmp_path / "events.jsonl", tmp_path / "report.json"
    proc = run_cli("caption", "wd14", str(folder), "--model_dir", str(wd14_model), "--trigger", "lsmiku",
                   "--events", str(events), "--report", str(report), timeout=120)
    assert "tagged" in proc.stdout and "4 written" in proc.stdout
    assert (folder / "red.txt").read_text(encoding="utf-8") == f"lsmiku, {RED}\n"
    lines = [json.loads(line) for line in events.read_text(encoding="utf-8").splitlines()]
    assert lines[0]["type"] == "start" and lines[-1]["type"] == "end" and lines[-1]["status"] == "completed"
    assert {"type": "phase", "name": "tagging", "total": 4}.items() <= next(
        e for e in lines if e["type"] == "phase" and e["name"] == "tagging").items()
    assert [e["step"] for e in lines if e["type"] == "step"] == [1, 2, 3, 4]
    data = json.loads(report.read_text(encoding="utf-8"))
    assert data["counts"] == {"written": 4} and len(data["images"]) == 4
    assert ["lsmiku", 4] in data["tag_frequency"] and ["outdoors", 1] in data["tag_frequency"]


def test_blip_captions_with_prefix_and_suffix(blip_model, tmp_path):
    folder = write_images(tmp_path / "img")
    (folder / "red.txt").write_text("my own caption\n", encoding="utf-8")
    _, report = caption_folder(caption_args("blip", str(folder), "--model_dir", str(blip_model), "--mode", "skip",
                                            "--prefix", "lsdemo,", "--suffix", "photo", "--min_length", "5",
                                            "--max_length", "10", "--batch_size", "2", "--device", "cpu"))
    captions = read_captions(folder)
    assert captions.pop("red.txt") == "my own caption\n"
    assert sorted(captions) == ["blue.txt", "half_transparent.txt", "wide_red.txt"]
    from tiny_captioners import BLIP_WORDS

    for text in captions.values():
        assert text.startswith("lsdemo, ") and text.endswith(" photo\n") and text.count("\n") == 1
        words = text[len("lsdemo, "):-len(" photo\n")].split()
        assert 4 <= len(words) <= 9 and set(words) <= set(BLIP_WORDS[5:])  # min_length 5 counts the start token
    assert report["counts"] == {"skipped": 1, "written": 3}

    _, report = caption_folder(caption_args("blip", str(folder), "--model_dir", str(blip_model), "--mode", "append",
                                            "--max_length", "6", "--num_beams", "2", "--device", "cpu"))
    red = next(r for r in report["images"] if r["image"].endswith("red.png"))
    assert red["action"] == "appended" and red["caption"].startswith("my own caption, ")
    assert (folder / "red.txt").read_text(encoding="utf-8") == red["caption"] + "\n"
    assert len(red["caption"][len("my own caption, "):].split()) >= 1


def test_cli_import_stays_light():
    code = "import sys, lora_studio.cli; print(sorted(m for m in ('torch', 'onnxruntime', 'transformers') " \
           "if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
