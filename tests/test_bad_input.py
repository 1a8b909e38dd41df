"""A corpus of awkward inputs trains to the end: every usable file is trained, every unusable one is skipped and
named, with a count at the start of the run."""

from __future__ import annotations

import io
import json

from PIL import Image

from conftest import base_settings, run_cli, write_config


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def build_corpus(folder):
    """Returns (file names that must train, file names that must be skipped)."""
    folder.mkdir(parents=True)
    good, bad = [], []

    def add(name, data, caption=None, encoding="utf-8", ok=True):
        (folder / name).write_bytes(data)
        if caption is not None:
            (folder / name).with_suffix(".txt").write_bytes(caption.encode(encoding) if isinstance(caption, str)
                                                              else caption)
        (good if ok else bad).append(name)

    red = Image.new("RGB", (96, 64), (200, 30, 30))
    add("plain photo.png", _png(red), "a red picture")
    add("truncated.png", _png(red)[:60], ok=False)
    add("zero.png", b"", ok=False)
    add("not really.jpg", b"this is a text file, not a JPEG", ok=False)
    cmyk = io.BytesIO()
    Image.new("CMYK", (64, 64), (0, 200, 200, 0)).save(cmyk, format="JPEG")
    add("cmyk.jpg", cmyk.getvalue(), "cmyk")
    add("sixteen bit.png", _png(Image.new("I;16", (64, 64), 40000)), "16-bit gray")
    palette = Image.new("P", (64, 64), 1)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.info["transparency"] = 0
    add("palette.png", _png(palette), "palette with transparency")
    exif_img = Image.new("RGB", (80, 40), (10, 200, 10))
    exif = exif_img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees when shown
    buf = io.BytesIO()
    exif_img.save(buf, format="JPEG", exif=exif.tobytes())
    add("exif rotated.jpg", buf.getvalue(), "rotated")
    add("huge.png", _png(Image.new("RGB", (4000, 3000), (20, 20, 90))), "a huge image")
    add("dup.png", _png(red))  # dup.png + dup.jpg share dup.txt
    add("dup.jpg", (lambda b: (red.save(b, format="JPEG"), b.getvalue())[1])(io.BytesIO()), "shared caption")
    add("bom.png", _png(red), b"\xef\xbb\xbfutf-8 with BOM")
    add("utf16.png", _png(red), "utf-16 caption", encoding="utf-16")
    add("shift_jis.png", _png(red), "日本語のキャプション", encoding="cp932")
    add("cp1252.png", _png(red), "café crème", encoding="cp1252")
    add("empty caption.png", _png(red), "")
    add("日本語 ü 🎨.png", _png(red), "non-ascii name")
    add("l" * 180 + ".png", _png(red), "a very long file name")
    return good, bad


def test_the_bad_input_corpus_trains_to_the_end(tiny_models, tmp_path):
    root = tmp_path / "data with spaces ü 日本"
    image_dir = root / "img" / "1_corpus thing"
    good, bad = build_corpus(image_dir)
    settings = base_settings(tiny_models["folder"], root / "img", tmp_path / "out", max_train_steps=None,
                             max_train_epochs=1, enable_bucket=True, min_bucket_reso=64, max_bucket_reso=128,
                             resolution="64", output_name="corpus")
    proc = run_cli("train", "--config", str(write_config(tmp_path / "run.toml", settings)))
    assert f"skipped {len(bad)} unreadable file(s)" in proc.stderr
    for name in bad:
        assert name in proc.stderr
    events = [json.loads(line) for line in (tmp_path / "out" / "corpus_events.jsonl").read_text("utf-8").splitlines()]
    start = events[0]
    assert start["type"] == "start" and start["num_images"] == len(good)
    assert sorted(p.rsplit("/", 1)[-1] for p in start["skipped"]) == sorted(bad)
    assert events[-1]["type"] == "end" and events[-1]["status"] == "completed"
    assert "dup.jpg and dup.png share the caption dup.txt" in proc.stderr
    assert (tmp_path / "out" / "corpus.safetensors").is_file()
