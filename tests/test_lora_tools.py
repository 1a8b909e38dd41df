"""``lora-studio lora inspect | resize | merge`` on files our trainer and LyCORIS write (tiny SD1 model)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from conftest import run_cli
from lora_studio.errors import UserError
from lora_studio.lora_delta import read_lora_file
from lora_studio.lora_tools.inspect import inspect_lora
from lora_studio.lora_tools.merge import merge_loras
from lora_studio.lora_tools.resize import resize_lora


def _deltas(path) -> dict[str, torch.Tensor]:
    f = read_lora_file(path)
    return {stem: m.delta(torch.zeros(m.delta_numel()))[0] for stem, m in f.modules.items()}


def _metadata(path) -> dict[str, str]:
    with safe_open(str(path), "pt") as fh:
        return fh.metadata()


def test_inspect_names_type_family_rank_and_apps(trained_run, tmp_path):
    proc = run_cli("lora", "inspect", str(trained_run["file"]), "--json", subprocess_=True)  # the command group's wiring
    report = json.loads(proc.stdout)
    assert report["family"] == "SD1.x" and report["type"] == "LoRA" and not report["non_finite"]
    assert {b["rank"][0] for b in report["blocks"].values()} == {4}
    assert {a for b in report["blocks"].values() for a in b["alpha"]} == {2.0}
    assert report["loads_in"]["diffusers"] == "yes" and report["training"]["ss_network_dim"] == 4
    assert "lsdemo" in json.dumps(report["tag_frequency"])
    text = run_cli("lora", "inspect", str(trained_run["file"])).stdout
    assert "family: SD1.x" in text and "rank 4" in text and "diffusers: yes" in text
    # a LyCORIS LoHa (keys as lycoris-lora writes them) without metadata: type and family from its keys
    sd = load_file(str(trained_run["file"]))
    loha = {}
    for stem in {k.split(".")[0] for k in sd}:
        down, up = sd[f"{stem}.lora_down.weight"].float(), sd[f"{stem}.lora_up.weight"].float()
        if down.ndim == 4:
            continue
        loha.update({f"{stem}.hada_w1_a": up, f"{stem}.hada_w1_b": down, f"{stem}.hada_w2_a": up.clone(),
                     f"{stem}.hada_w2_b": down.clone(), f"{stem}.alpha": torch.tensor(4.0)})
    save_file(loha, str(tmp_path / "loha.safetensors"))
    other = inspect_lora(tmp_path / "loha.safetensors")
    assert other["type"] == "LoHa" and other["family"] == "SD1.x / SD2.x"  # the tiny model's widths are no real one's
    assert other["loads_in"]["diffusers"].startswith("no") and other["loads_in"]["ComfyUI"] == "yes"


def test_resize_keeps_the_change_at_the_same_rank_and_cuts_the_svd_tail_below(trained_run, tmp_path):
    source = trained_run["file"]
    same, report = resize_lora(source, tmp_path / "same.safetensors", 4, save_precision="float", show_progress=False)
    before, after = _deltas(source), _deltas(same)
    for stem in before:
        assert torch.linalg.norm(after[stem] - before[stem]) <= 1e-5 * torch.linalg.norm(before[stem]) + 1e-7, stem
    # a module whose change is all zeros gets rank 1, as sd-scripts gives it
    assert all((r.new_rank == 4 or float(before[r.stem].norm()) == 0) and r.fro_kept == pytest.approx(1.0)
               for r in report)
    half, report = resize_lora(source, tmp_path / "half.safetensors", 2, save_precision="float",
                               show_progress=False)
    small = _deltas(half)
    for stem, full in before.items():
        matrix = full.reshape(full.shape[0], -1) if full.ndim > 1 else full
        s = torch.linalg.svdvals(read_lora_file(source).modules[stem].tensors["lora_up.weight"].flatten(1).float()
                                 @ read_lora_file(source).modules[stem].tensors["lora_down.weight"].flatten(1)
                                 .float()) * read_lora_file(source).modules[stem].scale
        error = torch.linalg.norm(small[stem].reshape(matrix.shape) - matrix)
        assert float(error) == pytest.approx(float(s[2:].pow(2).sum().sqrt()), rel=1e-3, abs=1e-6), stem
    meta = _metadata(half)
    assert meta["ss_network_dim"] == "2" and "resized from 4 to 2" in meta["ss_training_comment"]
    history = json.loads(meta["lora_studio_history"])
    assert history[-1]["tool"] == "resize" and history[-1]["parameters"]["new_rank"] == 2
    assert history[-1]["inputs"][0]["file"] == source.name
    dynamic, report = resize_lora(source, tmp_path / "dyn.safetensors", 4, dynamic_method="sv_fro",
                                  dynamic_param=0.5, show_progress=False)
    assert all((2 <= r.new_rank <= 4 or float(before[r.stem].norm()) == 0) and r.fro_kept >= 0.5 - 1e-6
               for r in report)
    assert _metadata(dynamic)["ss_network_dim"] == "Dynamic"
    with pytest.raises(UserError, match="is also an input"):
        resize_lora(source, source, 2, show_progress=False)
    # the resized file loads in diffusers with every key
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(trained_run["model"]), safety_checker=None)
    pipe.load_lora_weights(str(half), adapter_name="resized")
    loaded = [m for part in (pipe.unet, pipe.text_encoder) for m in part.modules()
              if hasattr(m, "lora_A") and "resized" in m.lora_A]
    assert len(loaded) == len(read_lora_file(half).modules)  # every module of the file


def test_concat_merge_equals_applying_both_and_svd_merge_is_the_best_low_rank(trained_run, tmp_path):
    a = trained_run["file"]
    epoch = sorted(trained_run["out"].glob("test_lora-0*.safetensors"))[0]
    merged = merge_loras([a, epoch], [0.7, -0.4], tmp_path / "both.safetensors", show_progress=False,
                         save_precision="float")
    da, db, dm = _deltas(a), _deltas(epoch), _deltas(merged)
    for stem in da:
        assert torch.allclose(dm[stem], 0.7 * da[stem] - 0.4 * db[stem], atol=1e-6), stem
    assert read_lora_file(merged).modules[next(iter(da))].rank == 8
    svd = merge_loras([a, epoch], [0.7, -0.4], tmp_path / "svd.safetensors", mode="svd", new_rank=8,
                      show_progress=False, save_precision="float")
    ds = _deltas(svd)
    assert all(torch.allclose(ds[s], dm[s], atol=1e-5) for s in da)  # rank 8 holds the whole sum
    history = json.loads(_metadata(svd)["lora_studio_history"])
    assert history[-1]["tool"] == "merge" and len(history[-1]["inputs"]) == 2
    proc = run_cli("lora", "merge", "--lora", str(a), "--lora", str(epoch), "--ratio", "1", "--out",
                   str(tmp_path / "cli.safetensors"), check=False)
    assert proc.returncode == 2 and "give one --ratio per --lora (2 files, 1 ratios)" in proc.stderr


def test_a_baked_checkpoint_is_base_plus_ratio_times_the_change(trained_run, tiny_models, tmp_path):
    """merge --model: every target of the merged checkpoint equals base + r x (alpha/rank) x up @ down; the file opens
    in our single-file loader and in diffusers' from_single_file (offline, with the model's own config folder)."""
    from lora_studio.lora_delta import lora_module_table
    from lora_studio.models.loading import load_components

    out = tmp_path / "baked.safetensors"
    run_cli("lora", "merge", "--model", str(tiny_models["single"]), "--lora", str(trained_run["file"]), "--ratio",
            "0.8", "--out", str(out))
    base, baked = (load_components(str(p), None, False) for p in (tiny_models["single"], out))
    lora = read_lora_file(trained_run["file"])
    before, after = lora_module_table(base), lora_module_table(baked)
    for stem, m in lora.modules.items():
        up = m.tensors["lora_up.weight"].flatten(1).float()
        down = m.tensors["lora_down.weight"].flatten(1).float()
        w0 = before[stem].weight.detach().float()
        expected = w0 + 0.8 * m.scale * (up @ down).reshape(w0.shape)
        assert torch.allclose(after[stem].weight.detach().float(), expected, atol=1e-6), stem
    untouched = baked.vae.decoder.conv_out.weight
    assert torch.equal(untouched, base.vae.decoder.conv_out.weight)
    history = json.loads(_metadata(out)["lora_studio_history"])
    assert history[0]["tool"] == "merge into checkpoint" and history[0]["parameters"]["ratios"] == [0.8]
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_single_file(str(out), config=str(tiny_models["folder"]),
                                                    local_files_only=True, safety_checker=None)
    names = {id(p): n for n, p in baked.denoiser.named_parameters()}
    theirs = dict(pipe.unet.named_parameters())
    for stem in lora.modules:
        if stem.startswith("lora_unet_"):  # diffusers reads the same merged U-Net weights
            name = names[id(after[stem].weight)]
            assert torch.allclose(theirs[name].float(), after[stem].weight.float(), atol=1e-6), name


def test_extract_recovers_a_planted_low_rank_change(tiny_models, tmp_path):
    from lora_studio.models.family import TargetSpec
    from lora_studio.models.loading import load_components
    from lora_studio.models.tiny import save_single_file

    tuned = load_components(str(tiny_models["single"]), None, False)
    g = torch.Generator().manual_seed(0)
    planted = {}
    for target in tuned.family.adapter_targets(tuned, True, False, TargetSpec()):
        stem, module = target.stem, target.module
        if "attn2_to_" in stem:
            out_f, in_f = module.weight.shape
            change = (torch.randn(out_f, 2, generator=g) @ torch.randn(2, in_f, generator=g)) * 0.05
            with torch.no_grad():
                module.weight += change
            planted[stem] = change
    save_single_file(tmp_path / "tuned.safetensors", tuned.denoiser, tuned.vae, tuned.text_encoders[0])
    out = tmp_path / "extracted.safetensors"
    run_cli("lora", "extract", "--model", str(tiny_models["single"]), "--tuned", str(tmp_path / "tuned.safetensors"),
            "--out", str(out), "--dim", "2", "--clamp_quantile", "1")
    got = _deltas(out)
    assert not any(s.startswith("lora_te") for s in got)  # the text encoder did not change: U-Net only
    assert planted and all(torch.allclose(got[s].reshape(c.shape), c, atol=1e-5) for s, c in planted.items())
    others = [s for s in got if s not in planted]
    assert all(float(got[s].abs().max()) < 1e-5 for s in others)  # nothing else changed
    meta = _metadata(out)
    assert meta["ss_network_dim"] == "2" and json.loads(meta["lora_studio_history"])[0]["tool"] == "extract"


def test_convert_to_diffusers_and_back_keeps_every_module_and_strength(trained_run, tmp_path):
    source = trained_run["file"]
    peft = tmp_path / "peft.safetensors"
    run_cli("lora", "convert", str(source), str(peft), "--to", "diffusers", "--model", str(trained_run["model"]))
    keys = set(load_file(str(peft)))
    assert all(k.startswith(("unet.", "text_encoder.")) and ".lora_" in k for k in keys)
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(trained_run["model"]), safety_checker=None)
    pipe.load_lora_weights(str(peft), adapter_name="converted")
    loaded = {n: m for part in (pipe.unet, pipe.text_encoder) for n, m in part.named_modules()
              if hasattr(m, "lora_A") and "converted" in m.lora_A}
    assert len(loaded) == len(read_lora_file(source).modules) == len(keys) // 2  # every module, none extra
    assert all(m.scaling["converted"] == 1.0 for m in loaded.values())  # alpha/rank is in the B weights
    back = tmp_path / "back.safetensors"
    run_cli("lora", "convert", str(peft), str(back), "--to", "kohya", "--model", str(trained_run["model"]))
    before, after = _deltas(source), _deltas(back)
    assert before.keys() == after.keys()
    assert all(torch.allclose(before[s], after[s], atol=1e-6) for s in before)


@pytest.mark.parametrize("algo, args, expected, diffusers_loads", [
    ("locon", ["algo=locon", "conv_dim=4"], "LoCon (LoRA with 3x3 convolutions)", True),
    ("loha", ["algo=loha"], "LoHa", False), ("lokr", ["algo=lokr", "factor=4"], "LoKr", False),
    ("ia3", ["algo=ia3"], "(IA)3", False), ("dora", ["algo=lora", "dora_wd=true"], "LoCon (LoRA with 3x3 convolutions) + DoRA", False)])
def test_inspect_names_each_lycoris_type(algo, args, expected, diffusers_loads, tiny_models, tmp_path):
    from lora_studio.config.network_args import parse_network_args
    from lora_studio.models.loading import load_components
    from lora_studio.network.lora import LoRANetwork

    components = load_components(str(tiny_models["single"]), None, False)
    net = LoRANetwork(components, 4, 2.0, train_text_encoder=True,
                      args=parse_network_args(args, "lycoris.kohya"))
    path = tmp_path / f"{algo}.safetensors"
    save_file({k: v.detach().contiguous() for k, v in net.state_dict().items()}, str(path))
    report = inspect_lora(path)
    assert report["type"] == expected and report["family"] == "SD1.x / SD2.x"
    assert report["loads_in"]["ComfyUI"] == "yes"
    assert report["loads_in"]["diffusers"].startswith("yes" if diffusers_loads else "no")
    if algo in ("locon", "loha"):
        assert {r for b in report["blocks"].values() for r in b["rank"]} == {4}
