"""The tool commands (``lora``, ``caption``, ``dataset check``, ``compare``) on the inputs their help accepts: a
diffusers folder as the base model works end to end; a folder where a file is expected (and the reverse), a missing
or damaged file or folder end in one ``error:`` line naming the input, never a traceback."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from conftest import run_cli
from lora_studio.file_hashes import folder_sha256


@pytest.fixture(scope="module")
def lora(tiny_models, tmp_path_factory):
    """A LoRA (rank 4, alpha 2, random up and down) for the tiny SD1 model."""
    from lora_studio.models.loading import load_components
    from lora_studio.network.lora import LoRANetwork
    from lora_studio.saving import save_lora

    components = load_components(str(tiny_models["single"]), None, False)
    network = LoRANetwork(components, 4, 2.0)
    g = torch.Generator().manual_seed(1)
    state = {k: (torch.randn(v.shape, generator=g) * 0.05 if k.endswith(".weight") else v)
             for k, v in network.state_dict().items()}
    return save_lora(tmp_path_factory.mktemp("lora") / "lora.safetensors", state, "float",
                     {"ss_network_module": "networks.lora"}, {"architecture": components.family.architecture(False)})


def _history(path) -> list:
    with safe_open(str(path), "pt") as fh:
        return json.loads(fh.metadata()["lora_studio_history"])


def test_a_lora_baked_into_a_diffusers_folder_base(tiny_models, lora, tmp_path):
    """merge --model FOLDER (the issue: the history hashed the folder as a file): the checkpoint is the base plus
    the change, the same as baked into the single-file form of the same model, and the history names the folder
    with the hash of its weight files."""
    from lora_studio.lora_delta import lora_module_table, read_lora_file
    from lora_studio.models.loading import load_components

    folder, single = tiny_models["folder"], tiny_models["single"]
    out = tmp_path / "from folder.safetensors"
    run_cli("lora", "merge", "--model", str(folder), "--lora", str(lora), "--ratio", "0.8", "--out", str(out),
            "--save_precision", "float")
    base = lora_module_table(load_components(str(folder), None, False))
    baked = lora_module_table(load_components(str(out), None, False))
    modules = read_lora_file(lora).modules
    for stem, m in modules.items():
        w0 = base[stem].weight.detach().float()
        change = (m.tensors["lora_up.weight"].flatten(1) @ m.tensors["lora_down.weight"].flatten(1)).reshape(w0.shape)
        assert torch.allclose(baked[stem].weight.detach().float(), w0 + 0.8 * m.scale * change, atol=1e-6), stem
    run_cli("lora", "merge", "--model", str(single), "--lora", str(lora), "--ratio", "0.8", "--out",
            str(tmp_path / "from file.safetensors"), "--save_precision", "float")
    from_folder, from_file = load_file(str(out)), load_file(str(tmp_path / "from file.safetensors"))
    shared = from_folder.keys() & from_file.keys()
    assert len(shared) > 0.9 * len(from_file)
    assert all(torch.allclose(from_folder[k], from_file[k], atol=1e-6) for k in shared)
    digest, count = folder_sha256(folder)
    inputs = _history(out)[0]["inputs"]
    assert inputs[0] == {"folder": folder.name, "sha256": digest, "weight_files": count} and count >= 3
    assert inputs[1]["file"] == lora.name and len(inputs[1]["sha256"]) == 64
    # extract takes a folder base too, and its history says so
    extracted = tmp_path / "extracted.safetensors"
    run_cli("lora", "extract", "--model", str(folder), "--tuned", str(out), "--out", str(extracted), "--dim", "4",
            "--clamp_quantile", "1")
    assert _history(extracted)[0]["inputs"][0]["folder"] == folder.name
    assert "from tiny-sd1, from folder.safetensors" in run_cli("lora", "inspect", str(extracted)).stdout


def _damaged_folders(model, root) -> dict:
    """Copies of a diffusers model folder, each with one defect."""
    def copy(name):
        target = root / name
        shutil.copytree(model, target)
        return target

    no_vae = copy("no vae")
    shutil.rmtree(no_vae / "vae")
    bad_index = copy("bad index")
    (bad_index / "model_index.json").write_text("{not json")
    cut = copy("cut weights")
    weights = cut / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    empty = root / "empty"
    empty.mkdir()
    return {"no vae": (no_vae, "cannot load the diffusers folder"), "bad index": (bad_index, "model_index.json"),
            "cut weights": (cut, "ends inside its header"), "empty": (empty, "is not a diffusers model folder")}


def _refused(argv, *words) -> str:
    proc = run_cli(*argv, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, (argv, proc.stderr[-3000:])
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and all(w in last for w in words), (argv, last)
    return last


def test_a_damaged_base_model_folder_is_named(tiny_models, lora, tmp_path):
    out = str(tmp_path / "out.safetensors")
    for name, (folder, words) in _damaged_folders(tiny_models["folder"], tmp_path).items():
        _refused(["lora", "merge", "--model", str(folder), "--lora", str(lora), "--out", out], "--model: ", words)
    _refused(["lora", "extract", "--model", str(tiny_models["single"]), "--tuned", str(tmp_path / "empty"), "--out",
              out], "--tuned: ", str(tmp_path / "empty"))
    _refused(["lora", "convert", str(lora), out, "--to", "diffusers", "--model", str(tmp_path / "no vae")],
             "--model: ", str(tmp_path / "no vae"))


def test_a_folder_where_a_file_goes_and_the_reverse(tiny_models, lora, tmp_path):
    folder = tmp_path / "a folder.safetensors"
    folder.mkdir()
    text = tmp_path / "notes.txt"
    text.write_text("some text")
    _refused(["lora", "resize", str(lora), str(folder)], str(folder), "is a folder")
    _refused(["lora", "merge", "--lora", str(lora), "--out", str(folder)], str(folder), "is a folder")
    _refused(["lora", "inspect", str(tiny_models["folder"])], str(tiny_models["folder"]), "is a folder")
    _refused(["lora", "merge", "--lora", str(text), "--out", str(tmp_path / "o.safetensors")], str(text))
    _refused(["caption", "wd14", str(lora)], str(lora), "is a file")
    _refused(["dataset", "check", str(lora)], str(lora), "is a file")
    prompt = ["--prompts", "a prompt --w 64 --h 64 --s 1"]
    _refused(["compare", "--files", str(tmp_path), "--model", str(tiny_models["single"]), *prompt],
             str(tmp_path), "is a folder")
    _refused(["compare", "--files", str(lora), "--model", str(tiny_models["single"]), *prompt, "--out", str(text)],
             str(text), "is a file")
    _refused(["compare", "--files", str(lora), "--model", str(tiny_models["single"]), "--prompts", str(tmp_path),
              "--out", str(tmp_path / "grids")], str(tmp_path), "is a folder")
    _refused(["train", "--config", str(folder)], str(folder), "is a folder")
    _refused(["dataset", "check", "--config", str(folder)], str(folder), "is a folder")
    (tmp_path / "no vae here").mkdir()
    _refused(["compare", "--files", str(lora), "--model", str(tiny_models["single"]), *prompt, "--vae",
              str(tmp_path / "no vae here"), "--out", str(tmp_path / "grids")], "vae: ", "not a diffusers VAE folder")


def test_another_tools_history_value_is_left_alone(lora, tmp_path):
    """A file whose lora_studio_history (or tag frequency) is not in our form: inspect shows the rest, a tool
    starts a new history."""
    for value in ("5", '["a step"]', '[{"tool": "x", "inputs": "y"}]', '{"a": 1}'):
        odd = tmp_path / "odd.safetensors"
        save_file(load_file(str(lora)), str(odd), metadata={"lora_studio_history": value,
                                                            "ss_tag_frequency": '{"f": {"tag": "many"}}'})
        assert "family:" in run_cli("lora", "inspect", str(odd)).stdout
        run_cli("lora", "resize", str(odd), str(tmp_path / "small.safetensors"), "--new_rank", "2")
        history = _history(tmp_path / "small.safetensors")
        assert history[-1]["tool"] == "resize" and (len(history) == 1 or value.startswith("["))
