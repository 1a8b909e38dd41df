"""The sha256 cache of model files: a file hashed once is not read again until its size or time changes; the cache
file is written atomically, a corrupt one is ignored; a diffusers folder is hashed by its weight files."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from lora_studio import file_hashes
from lora_studio.file_hashes import cache_dir, cached_sha256, folder_sha256


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv(file_hashes.CACHE_DIR_ENV, str(folder))
    return folder


@pytest.fixture
def reads(monkeypatch):
    """The files the cache hashes (reads in full), in order."""
    seen = []
    real = file_hashes.file_sha256

    def counting(path):
        seen.append(path)
        return real(path)
    monkeypatch.setattr(file_hashes, "file_sha256", counting)
    return seen


def test_the_second_call_reads_nothing_and_a_change_hashes_again(cache, reads, tmp_path):
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"weights" * 1000)
    expected = hashlib.sha256(model.read_bytes()).hexdigest()
    assert cached_sha256(model) == expected and len(reads) == 1
    assert cached_sha256(tmp_path / "." / "model.safetensors") == expected and len(reads) == 1  # the resolved path
    entry = json.loads((cache / "file_hashes.json").read_text())["files"][str(model.resolve())]
    assert entry == {"size": 7000, "mtime_ns": model.stat().st_mtime_ns, "sha256": expected}
    stat = model.stat()
    os.utime(model, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # touched: same bytes, new time
    assert cached_sha256(model) == expected and len(reads) == 2
    model.write_bytes(b"other weights")  # new contents and size
    os.utime(model, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # even with the old time
    assert cached_sha256(model) == hashlib.sha256(b"other weights").hexdigest() and len(reads) == 3
    assert cached_sha256(model) == hashlib.sha256(b"other weights").hexdigest() and len(reads) == 3


@pytest.mark.parametrize("content", [b"{not json", b"[]", b'{"version": 1, "files": []}',
                                     b'{"version": 99, "files": {}}', b"\xff\xfe"])
def test_a_corrupt_cache_file_is_ignored_and_replaced(cache, reads, tmp_path, content):
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"abc")
    cache.mkdir()
    (cache / "file_hashes.json").write_bytes(content)
    assert cached_sha256(model) == hashlib.sha256(b"abc").hexdigest() and len(reads) == 1
    assert cached_sha256(model) == hashlib.sha256(b"abc").hexdigest() and len(reads) == 1
    assert list(cache.iterdir()) == [cache / "file_hashes.json"]  # written in place of the bad one, no temp left


def test_a_wrong_entry_is_not_trusted(cache, reads, tmp_path):
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"abc")
    stat = model.stat()
    cache.mkdir()
    (cache / "file_hashes.json").write_text(json.dumps({"version": 1, "files": {str(model.resolve()): {
        "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": "not a hash"}}}))
    assert cached_sha256(model) == hashlib.sha256(b"abc").hexdigest() and len(reads) == 1


def test_an_unwritable_cache_folder_only_costs_the_hashing(tmp_path, monkeypatch, reads):
    blocker = tmp_path / "a file"
    blocker.write_text("")
    monkeypatch.setenv(file_hashes.CACHE_DIR_ENV, str(blocker / "cache"))  # cannot be made: its parent is a file
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"abc")
    assert cached_sha256(model) == cached_sha256(model) == hashlib.sha256(b"abc").hexdigest()
    assert len(reads) == 2


def test_the_cache_keeps_the_most_recent_files(cache, tmp_path, monkeypatch):
    monkeypatch.setattr(file_hashes, "MAX_ENTRIES", 3)
    paths = []
    for i in range(5):
        paths.append(tmp_path / f"{i}.bin")
        paths[-1].write_bytes(bytes([i]))
        cached_sha256(paths[-1])
    kept = json.loads((cache / "file_hashes.json").read_text())["files"]
    assert list(kept) == [str(p.resolve()) for p in paths[2:]]


def test_the_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(file_hashes.CACHE_DIR_ENV, str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"
    monkeypatch.delenv(file_hashes.CACHE_DIR_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if os.name != "nt":
        assert cache_dir() == tmp_path / "xdg" / "lora_studio"
        monkeypatch.delenv("XDG_CACHE_HOME")
        monkeypatch.setenv("HOME", str(tmp_path / "home"))
        assert cache_dir() == tmp_path / "home" / ".cache" / "lora_studio"


def test_a_folder_is_hashed_by_its_weight_files(cache, tmp_path, reads):
    folder = tmp_path / "model"
    (folder / "unet").mkdir(parents=True)
    (folder / "vae").mkdir()
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"unet")
    (folder / "vae" / "diffusion_pytorch_model.bin").write_bytes(b"vae")
    (folder / "model_index.json").write_text("{}")
    (folder / ".cache").mkdir()
    (folder / ".cache" / "x.safetensors").write_bytes(b"hidden")
    digest, count = folder_sha256(folder)
    listing = (f"unet/diffusion_pytorch_model.safetensors {hashlib.sha256(b'unet').hexdigest()}\n"
               f"vae/diffusion_pytorch_model.bin {hashlib.sha256(b'vae').hexdigest()}\n")
    assert count == 2 and digest == hashlib.sha256(listing.encode()).hexdigest()
    copy = tmp_path / "renamed"
    folder.rename(copy)
    (copy / "model_index.json").write_text('{"other": "config"}')
    assert folder_sha256(copy) == (digest, 2)  # the weights name it, not the folder's name or configs
    assert len(reads) == 4  # the renamed folder's files are other paths: hashed again
    assert folder_sha256(copy) == (digest, 2) and len(reads) == 4


def test_training_metadata_hashes_the_base_model_once(cache, reads, tiny_models):
    from lora_studio.training.metadata import _model_hashes

    legacy, sha = _model_hashes(str(tiny_models["single"]))
    assert sha == hashlib.sha256(tiny_models["single"].read_bytes()).hexdigest() and len(legacy) == 8
    assert _model_hashes(str(tiny_models["single"])) == (legacy, sha) and len(reads) == 1
    assert _model_hashes(str(tiny_models["folder"])) == (None, None)  # A1111's hashes are of single files
