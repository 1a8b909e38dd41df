"""The one .safetensors header reader: what it accepts, and the same clear error from every reader of a model or
LoRA file for a file that is missing, a folder, truncated or of another kind."""

from __future__ import annotations

import struct

import pytest
import torch
from safetensors.torch import save, save_file

from conftest import run_cli
from lora_studio.io_utils import (SAFETENSORS_HEADER_LIMIT, SafetensorsFormatError, read_safetensors_header,
                                  safetensors_header_of_bytes, safetensors_shapes)


@pytest.fixture
def good(tmp_path):
    path = tmp_path / "good.safetensors"
    save_file({"a": torch.zeros(4, 4), "b": torch.ones(3, dtype=torch.float16)}, str(path), metadata={"k": "v"})
    return path


def _bad_files(folder, good) -> dict[str, tuple]:
    """name -> (path, words its error holds)."""
    blob = good.read_bytes()
    start = safetensors_header_of_bytes(blob).data_start
    files = {"truncated data": (blob[:-5], "ends inside its tensor data"),
             "truncated header": (blob[:start - 3], "ends inside its header"),
             "too short": (blob[:5], "too short for a header"),
             "text": (b"this is a text file, not tensors", "over the 100,000,000-byte limit"),
             "header not JSON": (struct.pack("<Q", 8) + b"{not js}" + b"\0" * 8, "not a JSON object"),
             "header a list": (struct.pack("<Q", 8) + b"[1, 2]  ", "not a JSON object"),
             "bad entry": (struct.pack("<Q", 24) + b'{"x": {"dtype": "F32"}} ', "'x' is not a tensor's")}
    out = {}
    for name, (data, words) in files.items():
        path = folder / f"{name}.safetensors"
        path.write_bytes(data)
        out[name] = (path, words)
    out["missing"] = (folder / "missing.safetensors", "not found")
    out["folder"] = (folder, "is a folder, not a .safetensors file")
    return out


def test_the_header_reader_reads_tensors_metadata_and_data_start(good):
    header = read_safetensors_header(good)
    assert header.metadata == {"k": "v"} and set(header.tensors) == {"a", "b"}
    assert header.tensors["a"]["shape"] == [4, 4] and header.tensors["b"]["dtype"] == "F16"
    blob = good.read_bytes()
    assert safetensors_header_of_bytes(blob) == header
    assert blob[header.data_start:header.data_start + 64] == bytes(64)  # "a": 16 float32 zeros first
    assert safetensors_shapes(good) == {"a": ([4, 4], "F32"), "b": ([3], "F16")}
    assert SAFETENSORS_HEADER_LIMIT == 100_000_000  # the safetensors library's own


def test_a_header_without_its_weights_is_enough_for_shapes(good, tmp_path):
    """The resource estimate reads header-only files (bench_memory's header_only): shapes accept them, the full
    check does not."""
    blob = good.read_bytes()
    header_only = tmp_path / "header.safetensors"
    header_only.write_bytes(blob[:safetensors_header_of_bytes(blob).data_start])
    assert safetensors_shapes(header_only)["a"] == ([4, 4], "F32")
    with pytest.raises(SafetensorsFormatError, match="ends inside its tensor data"):
        read_safetensors_header(header_only)


def test_every_bad_file_is_named_with_its_reason(good, tmp_path):
    for name, (path, words) in _bad_files(tmp_path, good).items():
        with pytest.raises(SafetensorsFormatError) as info:
            read_safetensors_header(path, "--model")
        message = str(info.value)
        assert message.startswith("--model: ") and str(path) in message and words in message, (name, message)
        assert isinstance(info.value, ValueError)  # callers that treat an unreadable header as "unknown"


def test_every_reader_of_a_model_or_lora_gives_the_same_error(good, tmp_path, capsys):
    """The loaders, the LoRA reader, the tools and the estimate's shapes all answer a truncated or foreign file with
    the header reader's own message; the CLI prints it as one error line, exit code 2."""
    from lora_studio.compare import _header_metadata
    from lora_studio.lora_delta import read_lora_file
    from lora_studio.models.loading import SafetensorsView, load_components, read_safetensors
    from lora_studio.errors import UserError
    from lora_studio.models.registry import identify

    (tmp_path / "bad").mkdir()
    bad = _bad_files(tmp_path / "bad", good)
    for name in ("truncated data", "text"):
        path, words = bad[name]
        with pytest.raises(SafetensorsFormatError) as info:
            read_safetensors_header(path)
        reason = str(info.value)
        readers = {"SafetensorsView": lambda: SafetensorsView(path, "x"),
                   "read_safetensors": lambda: read_safetensors(path, "x"),
                   "load_components": lambda: load_components(str(path), None, False),
                   "read_lora_file": lambda: read_lora_file(path)}
        for reader, call in readers.items():
            with pytest.raises(SafetensorsFormatError) as info:
                call()
            assert str(info.value).endswith(reason), (reader, str(info.value))
        with pytest.raises(UserError) as info:  # Check settings reads the model as the engine will
            identify(path, False)
        assert reason in str(info.value)
        if name == "text":  # the shapes' reader does not need the weights: a truncated file passes it
            with pytest.raises(SafetensorsFormatError, match=words):
                safetensors_shapes(path)
        assert _header_metadata(path) == {}  # a run's file list: an unreadable file has no step
        for argv in (["lora", "inspect", str(path)],
                     ["lora", "merge", "--lora", str(path), "--out", str(tmp_path / "o.safetensors")],
                     ["lora", "resize", str(path), str(tmp_path / "r.safetensors")]):
            proc = run_cli(*argv, check=False)
            assert proc.returncode == 2 and "Traceback" not in proc.stderr, (argv, proc.stderr)
            assert reason in proc.stderr.strip().splitlines()[-1].removeprefix("error: "), (argv, proc.stderr)
