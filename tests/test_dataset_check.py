"""``lora-studio dataset check``: the dataset health report on small datasets built with PIL (CPU, no model)."""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageEnhance

from conftest import base_settings, run_cli, write_config
from lora_studio.cli import build_parser
from lora_studio.dataset_tools.check_cli import _check
from lora_studio.dataset_tools.health import CheckOptions, FolderSettings, check_datasets, datasets_from_folder
from lora_studio.dataset_tools.image_hash import Fingerprint, correlation, hamming, near_pairs

LONG = "emi, " + ", ".join(f"detailed tag number {i} with extra words" for i in range(20))
TAGS = ["smiling", "standing", "sitting", "from side", "red dress", "school uniform", "night", "outdoors",
        "close-up", "looking back", "holding cup", "waving", "hat", "blue sky", "angry", "running"]


def picture(seed: int, size: tuple[int, int]) -> Image.Image:
    """A varied picture: a random background colour with random ellipses and rectangles."""
    rng = random.Random(seed)
    img = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        x0, y0 = rng.randrange(size[0]), rng.randrange(size[1])
        x1, y1 = x0 + rng.randrange(30, size[0] // 2), y0 + rng.randrange(30, size[1] // 2)
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((x0, y0, x1, y1), fill=tuple(rng.randrange(256) for _ in range(3)))
    return img


def add(folder: Path, name: str, img: Image.Image | None, caption: str | None, **save) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    if img is not None:
        img.save(path, **save)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def messy(tmp_path_factory) -> Path:
    """``img/10_emi person`` with 12 good images and one of every fault, plus ``img/3_emi outfit`` holding a
    re-compressed copy of one of them."""
    root = tmp_path_factory.mktemp("messy") / "img"
    main = root / "10_emi person"
    sizes = [(512, 512), (640, 512), (512, 640), (768, 512), (512, 768), (600, 600)]
    for i in range(12):
        add(main, f"{i:02d}.png", picture(i, sizes[i % 6]), f"emi, {TAGS[i]}, {TAGS[15 - i]}")
    shutil.copy(main / "01.png", main / "dup_exact.png")
    add(main, "dup_exact.png", None, "emi, from side")
    bright = ImageEnhance.Brightness(Image.open(main / "03.png")).enhance(1.1).resize((720, 480))
    add(main, "near_dup.png", bright, "emi, brighter")
    add(main, "tiny.png", picture(100, (64, 64)), "emi, tiny")
    add(main, "no_caption.png", picture(101, (512, 512)), None)
    add(main, "empty_caption.png", picture(102, (512, 512)), "  \n")
    add(main, "long_caption.png", picture(103, (512, 512)), LONG)
    add(main, "no_trigger.png", picture(104, (512, 512)), "1girl, smiling")
    rgba = picture(105, (512, 512)).convert("RGBA")
    rgba.putalpha(_half_transparent())
    add(main, "rgba.png", rgba, "emi, transparent")
    grey = np.asarray(picture(106, (512, 512)).convert("L"), dtype=np.uint16) * 257
    add(main, "deep.png", Image.fromarray(grey), "emi, sixteen bit")
    add(main, "cmyk.jpg", picture(107, (512, 512)).convert("CMYK"), "emi, cmyk", quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6
    add(main, "rotated.jpg", picture(108, (640, 512)), "emi, rotated", exif=exif, quality=95)
    add(main, "broken.png", None, "emi, broken")
    (main / "broken.png").write_bytes(b"this is not a png at all" * 10)
    other = root / "3_emi outfit"
    add(other, "a.png", picture(200, (512, 512)), "emi, outfit a")
    add(other, "b.png", picture(201, (512, 512)), "emi, outfit b")
    add(other, "copy_of_05.jpg", Image.open(main / "05.png").convert("RGB"), "emi, copy", quality=90)
    return root


def _half_transparent() -> Image.Image:
    alpha = Image.new("L", (512, 512), 255)
    ImageDraw.Draw(alpha).rectangle((0, 0, 255, 511), fill=0)
    return alpha


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    """``img/3_lsx thing``: 20 captioned images, none small, each with its bucket's exact aspect ratio:
    8 of 600x600 (bucket 512x512), 6 of 720x560 (576x448), 6 of 560x720 (448x576)."""
    root = tmp_path_factory.mktemp("clean") / "img"
    folder = root / "3_lsx thing"
    sizes = [(600, 600)] * 8 + [(720, 560)] * 6 + [(560, 720)] * 6
    for i, size in enumerate(sizes):
        add(folder, f"{i:02d}.png", picture(1000 + i, size), f"lsx, {TAGS[i % 16]}, {TAGS[(i * 7 + 3) % 16]}")
    return root


@pytest.fixture(scope="module")
def messy_report(messy):
    datasets, early = datasets_from_folder(messy, FolderSettings())
    return check_datasets(datasets, CheckOptions(show_progress=False), messy, early_issues=early)


def _issue(report: dict, code: str) -> dict:
    found = [i for i in report["issues"] if i["code"] == code]
    assert found, f"no {code} in {[i['code'] for i in report['issues']]}"
    return found[0]


def _folder(report: dict, name: str) -> dict:
    return next(f for f in report["folders"] if f["name"] == name)


def test_hashes_match_edited_copies_and_tell_different_pictures_apart():
    base = picture(1, (512, 512))
    same = [ImageEnhance.Brightness(base).enhance(1.15), base.resize((300, 300)), base.convert("L").convert("RGB")]
    fp = Fingerprint.of(base)
    for copy in same:
        other = Fingerprint.of(copy)
        assert hamming(fp.phash, other.phash) <= 6 and correlation(fp, other) > 0.98
    others = [Fingerprint.of(picture(seed, (512, 512))) for seed in range(2, 30)]
    assert min(hamming(fp.phash, o.phash) for o in others) > 10
    assert max(correlation(fp, o) for o in others) < 0.9
    flat = [Fingerprint.of(Image.new("RGB", (64, 64), c)) for c in ((255, 0, 0), (0, 0, 255), (254, 0, 0))]
    assert near_pairs(flat + [fp] + others) == [(0, 2, 0, 1.0)]  # one colour matches only the same colour


def test_messy_dataset_names_each_fault_in_its_category(messy_report):
    r = messy_report
    main = _folder(r, "10_emi person")
    p = "10_emi person/"
    assert main["repeats"] == 10 and main["trigger"] == "emi" and main["unreadable"] == 1
    files = main["files"]
    assert [u["file"] for u in files["unreadable"]] == [p + "broken.png"] and files["unreadable"][0]["error"]
    assert files["alpha"] == [{"file": p + "rgba.png", "alpha": "transparent"}]
    assert [h["file"] for h in files["high_bit_depth"]] == [p + "deep.png"]
    assert files["cmyk"] == [p + "cmyk.jpg"]
    assert files["exif_rotated"] == [{"file": p + "rotated.jpg", "orientation": 6, "meaning": "rotated 90°"}]
    c = main["captions"]
    assert c["missing"] == [p + "no_caption.png"] and c["empty"] == [p + "empty_caption.png"]
    assert [o["file"] for o in c["overlong"]] == [p + "long_caption.png"] and c["overlong"][0]["tokens"] > 75
    assert c["longest"]["file"] == p + "long_caption.png"
    assert c["without_trigger"] == [p + "no_trigger.png"]
    assert tuple(c["top_tags"][0]) == ("emi", c["captioned"] - 1)  # all but no_trigger.png
    assert [s["file"] for s in main["small"]] == [p + "tiny.png"]
    tiny = main["small"][0]
    assert tiny["area_share"] == pytest.approx(64 * 64 / 512 ** 2, abs=1e-4) and tiny["upscale"] == 8.0
    # the rotated image trains upright: 512x640 stored with orientation 6 -> 512 wide, 640 high
    assert p + "rotated.jpg" not in [x["file"] for x in main["heavily_cropped"]]
    groups = {tuple(g["files"]): g for g in r["duplicates"]}
    assert groups[(p + "01.png", p + "dup_exact.png")]["kind"] == "identical files"
    near = groups[(p + "03.png", p + "near_dup.png")]
    assert near["kind"] == "near-duplicates" and near["keep"] == p + "03.png" and near["remove"] == [p + "near_dup.png"]
    across = groups[(p + "05.png", "3_emi outfit/copy_of_05.jpg")]  # across folders
    assert across["kind"] == "near-duplicates"
    assert len(r["duplicates"]) == 3
    levels = {i["code"]: i["level"] for i in r["issues"]}
    for code in ("files.unreadable", "images.tiny", "captions.missing", "captions.empty", "captions.overlong",
                 "captions.no_trigger", "images.duplicates"):
        assert levels[code] == "problem", code
    for code in ("files.alpha", "files.16bit", "files.cmyk", "files.exif_rotated"):
        assert levels[code] == "warning", code
    assert r["verdict"] == "not ready" and r["problems"] >= 9
    assert "remove 10_emi person/near_dup.png (keep 10_emi person/03.png)" in r["advice"]
    expected = {"files.unreadable": "broken.png", "images.tiny": "tiny.png", "captions.missing": "no_caption.png",
                "captions.empty": "empty_caption.png", "captions.overlong": "long_caption.png",
                "captions.no_trigger": "no_trigger.png", "files.alpha": "rgba.png", "files.16bit": "deep.png",
                "files.cmyk": "cmyk.jpg", "files.exif_rotated": "rotated.jpg"}
    for code, name in expected.items():
        issue = _issue(r, code)
        assert issue["files"] == [p + name] and name in issue["message"] and name in issue["advice"], code
    text = r["text"]
    for line in ("missing: no_caption.png", "empty: empty_caption.png", "without the trigger: no_trigger.png",
                 "overlong: long_caption.png", "alpha channel: rgba.png", "16-bit: deep.png", "CMYK: cmyk.jpg",
                 "EXIF-rotated: rotated.jpg", "unreadable: broken.png", "tiny.png (64x64, 1.6% of the area",
                 "10_emi person/05.png = 3_emi outfit/copy_of_05.jpg", "Verdict: not ready"):
        assert line in text, line


def test_messy_dataset_numbers(messy_report):
    r = messy_report
    main, other = _folder(r, "10_emi person"), _folder(r, "3_emi outfit")
    assert main["images"] == 23 and other["images"] == 3  # 12 good + 12 faulty files, broken.png unreadable
    assert main["samples_per_epoch"] == 230 and other["samples_per_epoch"] == 9
    assert r["datasets"][0]["training_images"] == 26
    assert r["steps_per_epoch"] == 239  # batch size 1: one step per sample
    assert sum(main["buckets"].values()) == 23


def test_cli_exit_code_json_report_and_events(messy, tmp_path):
    report, events = tmp_path / "report.json", tmp_path / "events.jsonl"
    proc = run_cli("dataset", "check", str(messy), "--json", "--report", str(report), "--events", str(events),
                   check=False, subprocess_=True)  # the command group's wiring as a process
    assert proc.returncode == 1, proc.stderr[-2000:]
    printed = json.loads(proc.stdout)
    saved = json.loads(report.read_text(encoding="utf-8"))
    assert printed["verdict"] == saved["verdict"] == "not ready"
    assert "Verdict: not ready" in saved["text"] and "near_dup.png" in saved["text"]
    kinds = [json.loads(line) for line in events.read_text(encoding="utf-8").splitlines()]
    types = [e["type"] for e in kinds]
    assert types[0] == "start" and types[-1] == "end"
    steps = [e for e in kinds if e.get("phase") == "checking images" and "step" in e]
    assert len(steps) == 27  # every image file, the unreadable one too


def test_clean_dataset_is_ready_with_hand_computed_buckets_and_steps(clean):
    proc = run_cli("dataset", "check", str(clean), "--batch_size", "4", "--report", str(clean.parent / "r.json"),
                   check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    assert "Verdict: ready" in proc.stdout
    r = json.loads((clean.parent / "r.json").read_text(encoding="utf-8"))
    assert r["verdict"] == "ready" and r["problems"] == r["warnings"] == 0
    f = r["folders"][0]
    assert f["buckets"] == {"512x512": 8, "448x576": 6, "576x448": 6}
    assert f["upscaled"] == [] and f["heavily_cropped"] == [] and f["small"] == []
    assert f["samples_per_epoch"] == 20 * 3 and f["steps_alone"] == 15
    # one bucket per batch: ceil(8*3/4) + ceil(6*3/4) + ceil(6*3/4) = 6 + 5 + 5
    assert r["datasets"][0]["buckets"] == {"512x512": 24, "448x576": 18, "576x448": 18}
    assert r["steps_per_epoch"] == 16 == 6 + math.ceil(18 / 4) * 2


def test_config_file_uses_the_runs_settings(clean, tmp_path):
    settings = base_settings(tmp_path / "model", clean, tmp_path / "out", resolution="512", train_batch_size=2,
                             enable_bucket=True, gradient_accumulation_steps=2)
    config = write_config(tmp_path / "run.toml", settings)
    proc = run_cli("dataset", "check", "--config", str(config), "--json", check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(proc.stdout)
    assert r["verdict"] == "ready" and r["datasets"][0]["batch_size"] == 2
    assert r["batches_per_epoch"] == 12 + 9 + 9 and r["steps_per_epoch"] == 15  # gradient accumulation 2
    assert r["batches_per_epoch"] == _trainer_batches(config)
    # without enable_bucket (off by default in a config, as in the trainer) every image is centre-cropped to
    # 512x512: a 720x560 image is resized to ceil(720 * 512 / 560) = 659 x 512 and loses 1 - 512/659 = 22%
    settings.pop("enable_bucket")
    config = write_config(tmp_path / "plain.toml", settings)
    args = build_parser().parse_args(["dataset", "check", "--config", str(config), "--json"])
    r = _check(args)
    crops = r["folders"][0]["heavily_cropped"]
    assert len(crops) == 12 and crops[0]["cut"] == pytest.approx(1 - 512 / 659, abs=1e-3)
    assert r["datasets"][0]["buckets"] == {"512x512": 60} and r["batches_per_epoch"] == 30
    assert r["verdict"] == "ready, with advice" and r["problems"] == 0
    assert _issue(r, "buckets.cropped")["level"] == "warning"


def _trainer_batches(config: Path) -> int:
    from lora_studio.config import load_config
    from lora_studio.data.dataset import TrainingData
    from lora_studio.data.sources import datasets_from_config

    cfg = load_config(config)
    return TrainingData(datasets_from_config(cfg), cfg.prior_loss_weight, cfg.seed or 0).batches_per_epoch


def test_config_with_regularisation_and_validation_split_counts_as_the_trainer(clean, tmp_path):
    reg = tmp_path / "reg" / "1_person"
    for i in range(4):
        add(reg, f"r{i}.png", picture(500 + i, (600, 600)), "person, lsx" if i == 0 else None)
    shutil.copy(clean / "3_lsx thing" / "00.png", reg / "r9.png")  # a training image among the regularisation ones
    settings = base_settings(tmp_path / "model", clean, tmp_path / "out", resolution="512", train_batch_size=2,
                             enable_bucket=True, reg_data_dir=str(reg.parent), validation_split=0.1, seed=5)
    config = write_config(tmp_path / "run.toml", settings)
    r = _check(build_parser().parse_args(["dataset", "check", "--config", str(config)]))
    train, regs = r["folders"]
    assert train["held_out"] == 2 and train["samples_per_epoch"] == 18 * 3 and regs["is_reg"]
    assert r["datasets"][0]["reg_samples"] == 54 and r["datasets"][0]["exact"]
    assert r["batches_per_epoch"] == _trainer_batches(config)
    (group,) = r["duplicates"]
    assert group["kind"] == "identical files" and group["keep"].endswith("3_lsx thing/00.png")
    assert group["remove"] == [n for n in group["files"] if n.endswith("r9.png")]
    assert _issue(r, "captions.reg_trigger")["files"][0].endswith("r0.png")
    assert _issue(r, "captions.reg_class_tokens")["level"] == "note"  # no caption: usual for regularisation


def test_too_few_images_and_a_plain_folder(tmp_path):
    folder = tmp_path / "pics"
    for i in range(5):
        add(folder, f"{i}.png", picture(300 + i, (512, 512)), f"cat, {TAGS[i]}")
    datasets, _ = datasets_from_folder(folder, FolderSettings())
    assert datasets[0].subsets[0].num_repeats == 1
    r = check_datasets(datasets, CheckOptions(trigger="cat", show_progress=False), folder)
    assert _issue(r, "images.count")["level"] == "problem" and r["verdict"] == "not ready"
    assert r["folders"][0]["trigger"] == "cat" and r["folders"][0]["captions"]["without_trigger"] == []
    for i in range(5, 12):
        add(folder, f"{i}.png", picture(300 + i, (512, 512)), f"cat, {TAGS[i]}")
    r = check_datasets(datasets, CheckOptions(trigger="dog", show_progress=False), folder)
    assert _issue(r, "images.count")["level"] == "warning"  # 12: 20-40 recommended
    assert _issue(r, "captions.no_trigger")["level"] == "problem"  # --trigger given: every caption must hold it
    assert any(i["code"] == "buckets.single" for i in r["issues"])  # all square: said, not a problem
    # the image folder itself given, named N_name: its repeats and trigger come from its name
    named = folder.rename(tmp_path / "4_cat")
    add(named, "small.png", picture(400, (400, 400)), "cat, small")  # 61% of 512x512, enlarged 1.28x: a warning
    add(named, "fits.png", picture(401, (576, 448)), "cat, fits")  # 98% of the area but exactly its bucket: a fact
    datasets, _ = datasets_from_folder(named, FolderSettings())
    r = check_datasets(datasets, CheckOptions(show_progress=False), named)
    f = r["folders"][0]
    assert f["repeats"] == 4 and f["trigger"] == "cat" and f["name"] == "4_cat" and f["samples_per_epoch"] == 56
    assert [(s["file"], s["upscale"]) for s in f["small"]] == [("small.png", 1.28), ("fits.png", 1.0)]
    assert _issue(r, "images.small")["files"] == ["small.png"]
    assert f["captions"]["missing"] == [] and f["captions"]["top_tags"][0] == ("cat", 14)
    assert r["verdict"] == "ready, with advice" and r["problems"] == 0  # 14 images and one small: warnings


def test_bad_input_exits_2(tmp_path):
    proc = run_cli("dataset", "check", str(tmp_path / "nowhere"), check=False)
    assert proc.returncode == 2 and "nowhere" in proc.stderr
    (tmp_path / "empty").mkdir()
    proc = run_cli("dataset", "check", str(tmp_path / "empty"), "--resolution", "500", check=False)
    assert proc.returncode == 2 and "resolution" in proc.stderr


# ---------------------------------------------------------------- the check and the trainer agree (data.scan)

def _awkward(root: Path) -> Path:
    """``img/3_emi person``: 9 captioned pictures of three shapes, one without a caption, one with an empty caption,
    an unreadable PNG, a GIF, a note, a caption without its image, and a folder without a repeats prefix;
    ``reg/1_person``: two regularisation pictures."""
    folder = root / "img" / "3_emi person"
    shapes = [(64, 64), (96, 64), (64, 96)]
    for i in range(9):
        add(folder, f"{i:02d}.png", picture(700 + i, shapes[i % 3]), f"emi, {TAGS[i]}")
    add(folder, "no_caption.png", picture(720, (64, 64)), None)
    add(folder, "empty_caption.png", picture(721, (96, 64)), "\n  \n")
    add(folder, "broken.png", None, "emi, broken")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but nothing after the signature")
    picture(722, (64, 64)).save(folder / "anim.gif")
    (folder / "notes.md").write_text("where these came from", encoding="utf-8")
    (folder / "gone.txt").write_text("emi, the image was deleted", encoding="utf-8")
    add(root / "img" / "unsorted", "x.png", picture(723, (64, 64)), "emi")
    for i in range(2):
        add(root / "reg" / "1_person", f"r{i}.png", picture(730 + i, (64, 64)), None)
    return root / "img"


def _both(img: Path, **settings):
    """The dataset check's report of a config and the trainer's dataset of it (as ``Trainer._setup_data`` builds it,
    with the config's seed)."""
    from lora_studio.config import build_config
    from lora_studio.data.dataset import TrainingData
    from lora_studio.data.sources import datasets_from_config
    from lora_studio.dataset_tools.check_cli import check_config

    cfg = build_config({"output_dir": "out", "pretrained_model_name_or_path": "m", "train_data_dir": str(img),
                        "reg_data_dir": str(img.parent / "reg"), "resolution": "64", "enable_bucket": True,
                        "min_bucket_reso": 64, "max_bucket_reso": 128, "bucket_reso_steps": 32,
                        "train_batch_size": 2, **settings})
    report = check_config(cfg)
    seed = cfg.seed if cfg.seed is not None else random.randint(0, 2**32 - 1)  # the trainer's, without a seed
    return report, TrainingData(datasets_from_config(cfg), cfg.prior_loss_weight, seed)


def _name(report: dict, path: Path) -> str:
    return path.resolve().relative_to(Path(report["root"]).resolve()).as_posix()


def test_the_check_reports_the_images_skipped_files_and_held_out_images_training_uses(tmp_path, caplog):
    img = _awkward(tmp_path)
    held_sets = set()
    for seed in (1, 2, 3, 4):
        caplog.clear()
        report, data = _both(img, validation_split=0.25, seed=seed)
        folders = report["folders"]
        assert [f["name"] for f in folders] == ["img/3_emi person", "reg/1_person"]
        found = sorted(n for f in folders for n in f["image_files"])
        assert found == sorted(_name(report, it.path) for it in data.items)
        assert len(found) == 11 + 2  # 9 + no_caption + empty_caption, and the regularisation pair
        skipped = [(u["file"], u["error"]) for f in folders for u in f["files"]["unreadable"]]
        assert skipped == [(_name(report, p), reason) for p, reason in data.skipped]
        assert [name for name, _ in skipped] == ["img/3_emi person/broken.png"]
        held = sorted(n for f in folders for n in f["held_out_files"])
        assert held == sorted(_name(report, it.path) for it in data.items if it.held_out)
        assert len(held) == round(11 * 0.25) and folders[1]["held_out_files"] == []  # regularisation never
        held_sets.add(tuple(held))
        assert "held out for validation: " in report["text"]
        assert report["batches_per_epoch"] == data.batches_per_epoch and report["datasets"][0]["exact"]
        assert report["datasets"][0]["training_samples"] == data.num_train_images == (11 - 3) * 3
        assert report["datasets"][0]["reg_samples"] == data.num_train_images  # one per training sample
        # the same captions: a missing or empty one trains with the class tokens, in both
        c = folders[0]["captions"]
        assert c["missing"] == ["img/3_emi person/no_caption.png"]
        assert c["empty"] == ["img/3_emi person/empty_caption.png"]
        by_name = {it.path.name: it for it in data.items}
        assert by_name["no_caption.png"].caption == by_name["empty_caption.png"].caption == "emi person"
        # with the two regularisation images, which have none
        assert "4 image(s) without a caption (3 without a caption file, 1 empty)" in data.summary()
        # files that do not train: named by both (the trainer in its log)
        files = folders[0]["files"]
        assert files["other_formats"] == ["img/3_emi person/anim.gif"]
        assert files["orphan_captions"] == ["img/3_emi person/gone.txt"]
        logged = caplog.text
        assert "anim.gif" in logged and "gone.txt" in logged and "broken.png" in logged
        assert "notes.md" not in logged and "notes.md" not in report["text"]  # not a picture: left alone
    assert len(held_sets) > 1  # the seed chooses them, for both


def test_without_a_seed_the_check_says_the_held_out_images_are_a_draw(tmp_path):
    report, _ = _both(_awkward(tmp_path), validation_split=0.25)
    assert not report["datasets"][0]["exact"] and "about " in report["text"]
    report, _ = _both(tmp_path / "img", validation_split=0.25, validation_seed=9)
    assert report["datasets"][0]["exact"]


def test_what_the_trainer_refuses_the_check_refuses_with_the_same_message(tmp_path):
    from lora_studio.errors import UserError

    img = _awkward(tmp_path)

    def refusals(**settings) -> tuple[str, str]:
        messages = []
        for which in (0, 1):
            with pytest.raises(UserError) as err:
                from lora_studio.config import build_config
                from lora_studio.data.dataset import TrainingData
                from lora_studio.data.sources import datasets_from_config
                from lora_studio.dataset_tools.check_cli import check_config

                cfg = build_config({"output_dir": "out", "pretrained_model_name_or_path": "m", "seed": 1,
                                    "train_data_dir": str(img), **settings})
                check_config(cfg) if which else TrainingData(datasets_from_config(cfg), 1.0, cfg.seed)
            messages.append(str(err.value))
        return messages[0], messages[1]

    trainer, check = refusals(resolution="500")
    assert trainer == check == "resolution must be a multiple of 8 and at least 64, got 500,500"
    trainer, check = refusals(resolution="64", caption_extension="txt")
    assert trainer == check and "caption_extension must be a file extension starting with a dot" in check
    masks = tmp_path / "masks"
    add(masks, "00.png", picture(740, (64, 64)), None)
    trainer, check = refusals(resolution="64", masked_loss=True, conditioning_data_dir=str(masks))
    assert trainer == check and "no mask for 11 image(s)" in check  # the unreadable one needs its mask as well
    toml = tmp_path / "dataset.toml"
    toml.write_text(f'[[datasets]]\nresolution = 64\nbucket_reso_steps = 12\nenable_bucket = true\n'
                    f'[[datasets.subsets]]\nimage_dir = "{(img / "3_emi person").as_posix()}"\n', encoding="utf-8")
    trainer, check = refusals(dataset_config=str(toml))
    assert trainer == check == "bucket_reso_steps must be a multiple of 8 (the VAE's scale), got 12"


def test_when_nothing_would_train_the_check_says_why_in_the_trainers_words(tmp_path):
    from lora_studio.config import build_config
    from lora_studio.data.dataset import TrainingData
    from lora_studio.data.sources import datasets_from_config
    from lora_studio.dataset_tools.check_cli import check_config
    from lora_studio.errors import UserError

    add(tmp_path / "img" / "2_cat", "only.png", picture(750, (64, 64)), "cat")
    cfg = build_config({"output_dir": "out", "pretrained_model_name_or_path": "m", "seed": 1, "resolution": "64",
                        "train_data_dir": str(tmp_path / "img"), "validation_split": 0.6})
    with pytest.raises(UserError) as err:
        TrainingData(datasets_from_config(cfg), 1.0, cfg.seed)
    issue = _issue(check_config(cfg), "images.count")
    assert issue["level"] == "problem" and issue["message"] == str(err.value)
    assert "validation_split = 0.6 holds out every training image" in issue["message"]
