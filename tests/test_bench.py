"""`lora-studio bench --tiny`: our training step and the diffusers+peft reference loop on the CPU, and the CPU proxies
of GPU speed (ATen operations per step; with ``--compile aot_eager`` graph breaks and recompilations)."""

from __future__ import annotations

import json

import torch
from torch import nn

from conftest import run_cli

from lora_studio.network.lora import LoRAModule


def test_tiny_bench_compiles_our_step_as_one_graph_and_dispatches_fewer_operations(tmp_path):
    """The issue's CPU proxies, our loop compiled by the aot_eager backend (dynamo's capture and AOTAutograd, no code
    generation; it dispatches the same ATen operations as eager): our step has no graph break and no recompilation
    after warm-up, and asks for no more ATen operations than the plain diffusers+peft loop (it was 67 graph breaks at
    Tensor.item(), 79 graphs, before)."""
    out = tmp_path / "bench.json"
    proc = run_cli("bench", "--tiny", "--precision", "bf16", "--rank", "4", "--steps", "2", "--warmup", "1",
                   "--compile", "aot_eager", "--json", str(out), timeout=600)
    assert "ours vs reference" in proc.stdout and "recompiles" in proc.stdout
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["compile"] == "aot_eager"
    ours, reference = report["results"]
    assert ours["loop"] == "lora-studio" and reference["loop"].startswith("reference")
    for result in (ours, reference):
        assert result["step_ms"] > 0 and result["samples_per_s"] > 0 and result["peak_memory_mb"] > 0
        assert result["tflop_per_sample"] > 0  # counted with torch.utils.flop_counter on the same model
        assert result["aten_ops_per_step"] > 1000  # a UNet step, counted by torch.profiler
    assert abs(ours["tflop_per_sample"] - reference["tflop_per_sample"]) / reference["tflop_per_sample"] < 0.05
    assert ours["graph_breaks"] == 0 and ours["recompiles"] == 0, ours
    assert reference["graph_breaks"] is None and not report["compile_reference"]  # diffusers' example: eager
    assert ours["aten_ops_per_step"] <= reference["aten_ops_per_step"], report


def _adapter(base: nn.Linear, alpha: float) -> LoRAModule:
    adapter = LoRAModule("lora_unet_x", base, rank=4, alpha=alpha)
    nn.init.normal_(adapter.lora_up.weight)
    adapter.attach()
    return adapter


def test_the_lora_forward_reads_no_tensor_value_and_follows_a_loaded_alpha():
    torch.manual_seed(0)
    base = nn.Linear(16, 8)
    adapter = _adapter(base, alpha=2.0)
    assert isinstance(adapter.scale, float) and adapter.scale == 0.5
    x = torch.randn(3, 16)
    delta = adapter.lora_up.weight @ adapter.lora_down.weight
    expected = nn.functional.linear(x, base.weight, base.bias) + 0.5 * x @ delta.T
    with torch.no_grad():
        assert torch.allclose(base(x), expected, atol=1e-5)
        state = {k: v.clone() for k, v in adapter.state_dict().items()}
        state["alpha"] = torch.tensor(1.0)  # a file trained at another alpha
        adapter.load_state_dict(state)
        assert adapter.scale == 0.25
        assert torch.allclose(base(x), nn.functional.linear(x, base.weight, base.bias) + 0.25 * x @ delta.T,
                              atol=1e-5)


def test_the_lora_computes_in_its_compute_dtype_whatever_the_input_dtype():
    """One dtype path: float32 weights, inputs in float32 or bf16, the adapter computes in bf16 (the run's autocast
    dtype) and returns the base output's dtype; under autocast the result is the same."""
    torch.manual_seed(0)
    base = nn.Linear(16, 8)
    adapter = _adapter(base, alpha=4.0)
    adapter.compute_dtype = torch.bfloat16
    x = torch.randn(2, 16)
    with torch.no_grad():
        plain = base(x)
        assert plain.dtype == torch.float32
        down, up = adapter.lora_down.weight.bfloat16(), adapter.lora_up.weight.bfloat16()
        expected = nn.functional.linear(x, base.weight, base.bias) + (x.bfloat16() @ down.T @ up.T).float()
        assert torch.allclose(plain, expected, atol=1e-2)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = base(x.bfloat16())
        assert mixed.dtype == torch.bfloat16
        assert torch.allclose(mixed.float(), plain, atol=0.1)


def test_bench_train_times_the_engine_after_its_warm_up_and_puts_the_estimate_beside(tmp_path):
    """``bench --train``: a random checkpoint and images written, the engine trains, the steady state is timed from
    its step events after the warm-up."""
    out = tmp_path / "train.json"
    proc = run_cli("bench", "--train", "--tiny", "--precision", "no", "--rank", "4", "--batch", "2", "--steps", "4",
                   "--warmup", "2", "--folder", str(tmp_path / "bench"), "--json", str(out))
    assert "steady state over 4 steps after 2 warm-up" in proc.stdout
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["model"] == "tiny-sd15" and report["text_encoders"] == "cached" and report["steps_timed"] == 4
    assert report["step_ms"] > 0 and abs(report["samples_per_s"] - 2 / (report["step_ms"] / 1000)) < 0.05
    assert report["peak_ram_mb"] > 100 and report["estimate_ram_mb"] > 100  # the engine's estimate beside it
    assert report["peak_gpu_mb"] is None  # no CUDA here: RAM only
    assert (tmp_path / "bench" / "model" / "random-sd15-tiny.safetensors").is_file()
    assert (tmp_path / "bench" / "run" / "bench.safetensors").is_file()


def test_the_steady_state_leaves_the_warm_up_out():
    from lora_studio.bench_train import steady_state

    events = [{"type": "step", "step": s, "time": t} for s, t in ((1, 10.0), (2, 10.9), (3, 11.0), (4, 11.1))]
    step_s, measured = steady_state(events + [{"type": "log", "time": 12.0}], warmup=2)
    assert measured == 2 and abs(step_s - 0.1) < 1e-9


def test_compile_settings_become_torch_compile_arguments(caplog):
    from lora_studio.config import build_config
    from lora_studio.training.compile import compile_options

    def options(**settings):
        return compile_options(build_config({"torch_compile": True, **settings}))
    assert options() == {"backend": "inductor", "fullgraph": False, "dynamic": None}
    assert options(dynamo_backend="no", dynamo_mode="reduce-overhead", dynamo_use_fullgraph=True,
                   dynamo_use_dynamic=True) == {"backend": "inductor", "fullgraph": True, "dynamic": True,
                                                "mode": "reduce-overhead"}
    assert "mode" not in options(dynamo_backend="aot_eager", dynamo_mode="max-autotune")
    assert "takes no mode" in caplog.text
