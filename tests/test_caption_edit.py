"""The caption editor's file side: pages, tag frequency, one edit, bulk tag changes that are exact, undoable and
safe against a kill in the middle."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from lora_studio.dataset_tools import caption_edit as ce
from lora_studio.errors import UserError

CAPTIONS = {"a": "emi, 1girl, smile", "b": "emi, 1girl, hat", "c": "1girl, smile, hat", "d": None, "e": ""}


def _folder(root: Path, captions: dict = CAPTIONS) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, caption in captions.items():
        Image.new("RGB", (8, 8), (10, 20, 30)).save(root / f"{name}.png")
        if caption is not None:
            (root / f"{name}.txt").write_text(caption + "\n", encoding="utf-8")
    return root


def _captions(root: Path) -> dict:
    return {p.stem: p.read_text(encoding="utf-8").strip() for p in sorted(root.glob("*.txt"))}


def test_pages_and_the_tag_frequency_table(tmp_path):
    root = _folder(tmp_path / "img")
    items = ce.images_with_captions(root)
    assert [i.image.name for i in items] == ["a.png", "b.png", "c.png", "d.png", "e.png"]
    assert items[3].caption is None and items[4].caption == ""
    assert [i.image.stem for i in ce.page(items, 2, 2)] == ["c", "d"]
    assert [i.image.stem for i in ce.page(items, 9, 2)] == ["e"]  # past the end: the last page
    assert ce.tag_frequency(items) == [("1girl", 3), ("emi", 2), ("hat", 2), ("smile", 2)]
    assert ce.tag_frequency(items, "MI") == [("emi", 2), ("smile", 2)]
    with pytest.raises(UserError, match="Caption folder not found"):
        ce.images_with_captions(tmp_path / "nope")


def test_bulk_changes_are_exact_and_each_is_undone(tmp_path):
    root = _folder(tmp_path / "img")
    original = _captions(root)
    changed = ce.bulk_edit(root, "add", "emi", at_front=True)
    assert sorted(p.stem for p in changed) == ["c", "d", "e"]  # a and b have it; d had no caption, now has one
    assert _captions(root) == {"a": "emi, 1girl, smile", "b": "emi, 1girl, hat", "c": "emi, 1girl, smile, hat",
                               "d": "emi", "e": "emi"}
    ce.bulk_edit(root, "replace", "1girl", "solo girl")
    ce.bulk_edit(root, "remove", "hat")
    ce.bulk_edit(root, "front", "smile")
    assert _captions(root) == {"a": "smile, emi, solo girl", "b": "emi, solo girl", "c": "smile, emi, solo girl",
                               "d": "emi", "e": "emi"}
    assert ce.bulk_edit(root, "remove", "not there") == []  # nothing changed: no backup either
    assert len(ce.backups(root)) == 4
    ce.edit_caption(root, root / "b.png", "emi, solo girl,\nwink")
    assert _captions(root)["b"] == "emi, solo girl, wink"
    for expected in ("edit b.png", "move 'smile' to the front", "remove 'hat'", "replace '1girl' with 'solo girl'"):
        assert ce.undo_last(root).startswith(f"Undid: {expected}")
    assert ce.undo_last(root) == "Undid: add 'emi' (3 caption(s))"
    assert _captions(root) == original and not (root / "d.txt").exists()
    with pytest.raises(UserError, match="Nothing to undo"):
        ce.undo_last(root)
    with pytest.raises(UserError, match="Give one tag"):
        ce.bulk_edit(root, "add", "a, b")
    with pytest.raises(UserError, match="not an image in"):
        ce.edit_caption(root, tmp_path / "elsewhere.png", "x")


def test_a_kill_during_a_bulk_change_leaves_each_caption_old_or_new_and_undo_restores_them(tmp_path):
    captions = {f"{n:02d}": f"tag{n}, common" for n in range(30)}
    root = _folder(tmp_path / "img", captions)
    code = ("import sys; from lora_studio.dataset_tools.caption_edit import bulk_edit; "
            "bulk_edit(sys.argv[1], 'replace', 'common', 'shared')")
    env = {**os.environ, "LORA_STUDIO_TEST_CAPTION_WRITE_DELAY": "0.05"}
    proc = subprocess.Popen([sys.executable, "-c", code, str(root)], env=env)
    deadline = time.time() + 60
    while time.time() < deadline and sum("shared" in t for t in _captions(root).values()) < 5:
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    after = _captions(root)
    new = [k for k, t in after.items() if t == f"tag{int(k)}, shared"]
    old = [k for k, t in after.items() if t == f"tag{int(k)}, common"]
    assert len(new) >= 5 and old and sorted(new + old) == sorted(captions)  # nothing half-written, nothing lost
    assert ce.undo_last(root).startswith("Undid: replace 'common' with 'shared'")
    assert _captions(root) == captions


def test_the_dataset_tabs_editor_and_tagging_fields(tmp_path):
    from lora_studio.gui.dataset_tab import CAPTION_TOOLS, DatasetTab
    from lora_studio.jobs.runs import RunManager
    from lora_studio.gui.tools_tab import tool_options

    root = _folder(tmp_path / "img")
    manager = RunManager(tmp_path / "state")
    tab = DatasetTab(manager, [tmp_path])
    gallery, paths, table, where, number = tab.show(str(root), ".txt", 1, "")
    assert [caption for _, caption in gallery] == ["emi, 1girl, smile", "emi, 1girl, hat", "1girl, smile, hat",
                                                   "(no caption)", ""]
    assert where == "5 image(s), page 1 of 1; 1 without a caption" and number == 1
    assert table.values.tolist() == [["1girl", 3], ["emi", 2], ["hat", 2], ["smile", 2]]
    assert tab.save_caption(str(root), ".txt", paths[3], "emi, new") == "Saved d.txt (Undo puts the old caption back)."
    assert tab.bulk(str(root), ".txt", "remove", "1girl", "", False) == "Changed 3 caption(s). Undo puts them back."
    assert _captions(root)["a"] == "emi, smile" and _captions(root)["d"] == "emi, new"
    assert tab.undo(str(root)).startswith("Undid: remove '1girl'") and _captions(root)["a"] == "emi, 1girl, smile"
    assert tab.show(str(tmp_path.parent), ".txt", 1, "")[3].startswith("✗") and "outside the folders" in \
        tab.show(str(tmp_path.parent), ".txt", 1, "")[3]
    wd14 = CAPTION_TOOLS[0]
    values = {f.name: f.default for f in wd14.fields} | {"folder": str(root), "trigger": "emi", "dry_run": True}
    options, label = tool_options(wd14, values)
    assert options[0] == str(root) and "--trigger=emi" in options and "--mode=skip" in options
    assert "--dry_run" in options and "--general_threshold=0.35" in options and label == "wd14 tags: img"
    rec = manager.enqueue_tool(wd14.command, options, label, wd14.group)
    assert rec.argv[3:5] == ["caption", "wd14"]
    manager.close()
