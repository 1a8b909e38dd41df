"""Security: no shell anywhere, pickle only with consent and only as data, GUI paths confined to the allowed
folders, nothing served outside them, and dependency floors for known CVEs."""

from __future__ import annotations

import re
import tomllib
import urllib.error
import urllib.request
from importlib.metadata import version
from pathlib import Path

import pytest
import torch

from conftest import REPO, cli_path
from lora_studio.errors import UserError

SHELL = re.compile(r"shell\s*=\s*True|os\.system\(|os\.popen\(|subprocess\.getoutput|subprocess\.getstatusoutput|"
                   r"commands\.getoutput|pty\.spawn")


def test_nothing_runs_through_a_shell():
    offenders = []
    for path in (REPO / "lora_studio").rglob("*.py"):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if SHELL.search(line):
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not offenders, offenders
    # every subprocess the package starts is given an argv list
    for path in (REPO / "lora_studio").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        for call in re.findall(r"subprocess\.(?:run|Popen|call|check_call|check_output)\(\s*([^\s,]+)", text):
            assert call.startswith(("[", "rec.argv", "argv")), f"{path.name}: {call}"


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.mkdir, (str(self.marker),))


def test_pickle_models_need_consent_and_load_only_as_data(tiny_models, tmp_path):
    from lora_studio.models.loading import load_components
    from lora_studio.models.tiny import ldm_state_dict

    reference = load_components(str(tiny_models["single"]), None, False)
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": ldm_state_dict(reference.denoiser, reference.vae, reference.text_encoders[0])}, ckpt)
    with pytest.raises(UserError, match="pickle file .* allow_pickle = true"):
        load_components(str(ckpt), None, False)
    loaded = load_components(str(ckpt), None, False, allow_pickle=True)
    for (name, a), b in zip(reference.denoiser.state_dict().items(), loaded.denoiser.state_dict().values()):
        assert torch.equal(a, b), name

    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": _RunsCode(marker)}, evil)
    with pytest.raises(UserError, match="refused: it is not plain tensor data"):
        load_components(str(evil), None, False, allow_pickle=True)
    assert not marker.exists()


def test_gui_paths_are_confined_to_the_allowed_folders(tmp_path):
    from lora_studio.gui.form import check_form

    allowed = tmp_path / "allowed"
    (allowed / "img").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (allowed / "link").symlink_to(tmp_path / "elsewhere")
    values = {"train_data_dir": str(allowed / "img"), "output_dir": str(allowed / "link" / "out"),
              "pretrained_model_name_or_path": "/etc/passwd", "sample_prompts": str(allowed / ".." / "x.txt")}
    problems = check_form(values, scan_dataset=False, roots=[allowed]).problems
    assert "outside the folders allowed" in problems["pretrained_model_name_or_path"]
    assert "outside" in problems["output_dir"]  # a link out of the folder does not count as inside
    assert "outside" in problems["sample_prompts"]  # nor does ..
    assert "train_data_dir" not in problems


def test_the_gui_serves_no_file_outside_its_own(tmp_path):
    from gui_helpers import running_gui

    secret = tmp_path / "secret.txt"
    secret.write_text("do not serve", encoding="utf-8")
    codes = []
    with running_gui(cli_path(), tmp_path / "state", tmp_path / "gui.log", allow=[tmp_path]) as (url, _):
        for path in ("/etc/passwd", str(secret)):
            for route in ("gradio_api/file=", "file=", "gradio_api/file/"):
                try:
                    with urllib.request.urlopen(url + route + path, timeout=10) as response:
                        body = response.read().decode("utf-8", "replace")
                except urllib.error.HTTPError as exc:
                    assert exc.code in (403, 404, 405), (route, path, exc.code)
                    codes.append(exc.code)
                    continue
                assert "root:" not in body and "do not serve" not in body, (route, path)
    assert 403 in codes  # Gradio's file route exists and refused, not merely an unknown URL


def _floor(spec: str, name: str) -> str:
    match = re.match(rf"{name}\s*>=\s*([\d.]+)", spec)
    return match[1] if match else ""


def test_dependency_floors_for_known_cves_are_pinned_and_installed():
    from packaging.version import Version

    deps = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    floors = {name: max((_floor(d, name) for d in deps if d.startswith(name)), default="") for name in ("torch",
                                                                                                        "gradio")}
    assert Version(floors["torch"]) >= Version("2.6")  # CVE-2025-32434: torch.load RCE below 2.6
    assert Version(floors["gradio"]) >= Version("6.16")  # CVE-2026-49119 and earlier path traversals
    assert Version(version("torch").split("+")[0]) >= Version("2.6")
    assert Version(version("gradio")) >= Version("6.16")


def test_on_this_computer_any_path_is_accepted_and_on_the_network_only_the_allowed_folders(tmp_path, monkeypatch):
    """Loopback (the default): the user's own machine, models may sit in another app's folder or on another drive.
    Listening on the network: the home folder or the --allow-dir folders only (a shared machine)."""
    from lora_studio.cli import allowed_folders
    from lora_studio.gui.app import Workbench

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setattr(Path, "home", classmethod(lambda cls: home))
    assert allowed_folders("127.0.0.1", None) is None and allowed_folders("localhost", None) is None
    assert allowed_folders("0.0.0.0", None) == [home]
    assert allowed_folders("127.0.0.1", [str(tmp_path / "only")]) == [tmp_path / "only"]

    elsewhere = tmp_path / "stable-diffusion-webui" / "run.toml"  # outside the home folder
    elsewhere.parent.mkdir()
    elsewhere.write_text('network_dim = 12\n', encoding="utf-8")
    local = Workbench(tmp_path / "state", allowed_roots=allowed_folders("127.0.0.1", None))
    assert local.lora.config.load_path(str(elsewhere))[-1] == f"Loaded {elsewhere}."
    shared = Workbench(tmp_path / "state2", allowed_roots=allowed_folders("0.0.0.0", None))
    message = shared.lora.config.load_path(str(elsewhere))[-1]
    assert message.startswith("✗ Not loaded") and "outside the folders allowed" in message
    # the training runs it starts confine themselves to the same folders (the engine's --allow-dir)
    from lora_studio.config import build_config
    from lora_studio.jobs.command import engine_argv

    assert shared.manager.allowed_dirs == shared.roots and local.manager.allowed_dirs is None
    argv = engine_argv(build_config({}), tmp_path / "run.toml", shared.manager.allowed_dirs)
    assert argv[argv.index("lora_studio.train"):] == ["lora_studio.train", "--config", str(tmp_path / "run.toml"),
                                                      "--allow-dir", str(home.resolve()),
                                                      "--allow-dir", str((tmp_path / "state2").resolve())]
