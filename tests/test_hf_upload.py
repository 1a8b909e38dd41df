"""Uploads to the Hugging Face Hub as sd-scripts makes them (huggingface_repo_id, huggingface_path_in_repo,
huggingface_repo_visibility, save_state_to_huggingface, async_upload) and resume_from_huggingface, through a fake
Hub client: never the network. A refused upload is said once and never fails the run or touches its files; the
token is never written anywhere."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import pytest
import tomli_w
from safetensors import safe_open

from conftest import base_settings, run_cli
from lora_studio.config import build_config, dumps_config
from lora_studio.errors import UserError
from lora_studio.training import hub_upload
from lora_studio.training.hub_upload import HubUploads, download_state, parse_hub_resume

TOKEN = "hf_test0123456789secret"


class Refused(Exception):
    """What the Hub answers a token without write access (huggingface_hub raises an HfHubHTTPError)."""


class FakeHub:
    """Stands in for ``huggingface_hub.HfApi``: keeps what is uploaded (the bytes, read when it is uploaded), the
    repositories it creates, and serves uploaded files back for a download."""

    def __init__(self, cache: Path, existing: tuple[str, ...] = (), refuse: bool = False, before_upload=None):
        self.cache, self.refuse, self.before_upload = cache, refuse, before_upload
        self.tokens: list[str | None] = []
        self.repos: dict[str, dict] = {name: {"repo_type": None, "private": None} for name in existing}
        self.created: list[tuple] = []
        self.files: dict[tuple[str, str], bytes] = {}  # (repo_id, path in repo) -> bytes
        self.uploads: list[dict] = []  # each call, in order
        self.offline_during_upload: list[bool] = []

    def client(self, token):
        self.tokens.append(token)
        return self

    def repo_exists(self, repo_id, *, repo_type=None):
        return repo_id in self.repos

    def create_repo(self, repo_id, *, repo_type=None, private=None, exist_ok=False):
        self.created.append((repo_id, repo_type, private))
        self.repos[repo_id] = {"repo_type": repo_type, "private": private}

    def _upload(self, kind, repo_id, repo_type, local, path_in_repo):
        from huggingface_hub import constants

        self.offline_during_upload.append(constants.is_offline_mode())
        if self.before_upload:
            self.before_upload(path_in_repo)
        if self.refuse:
            raise Refused(f"403 Forbidden: you have no write access to {repo_id}")
        self.uploads.append({"kind": kind, "repo_id": repo_id, "repo_type": repo_type, "path": path_in_repo,
                             "thread": threading.current_thread().name})
        files = sorted(p for p in Path(local).rglob("*") if p.is_file()) if kind == "folder" else [Path(local)]
        for file in files:
            name = path_in_repo if kind == "file" else f"{path_in_repo}/{file.relative_to(local).as_posix()}"
            self.files[(repo_id, name)] = file.read_bytes()

    def upload_file(self, *, path_or_fileobj, path_in_repo, repo_id, repo_type=None, commit_message=None):
        self._upload("file", repo_id, repo_type, path_or_fileobj, path_in_repo)

    def upload_folder(self, *, repo_id, folder_path, path_in_repo=None, repo_type=None, commit_message=None):
        self._upload("folder", repo_id, repo_type, folder_path, path_in_repo)

    def list_repo_files(self, repo_id, *, revision=None, repo_type=None):
        return [name for repo, name in self.files if repo == repo_id]

    def hf_hub_download(self, repo_id, filename, *, revision=None, repo_type=None):
        path = self.cache / repo_id.replace("/", "--") / (revision or "main") / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.files[(repo_id, filename)])
        return str(path)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    fake = FakeHub(tmp_path / "hf-cache")
    monkeypatch.setattr(hub_upload, "hub_client", fake.client)
    return fake


def _cfg(tmp_path, **settings):
    return build_config({"output_dir": str(tmp_path / "out"), "huggingface_repo_id": "me/emi-lora", **settings})


def _saved(tmp_path, name: str, data: bytes = b"lora") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------- the uploads, without training
def test_files_go_to_the_path_in_repo_of_a_repo_created_private_once(tmp_path, hub, caplog):
    caplog.set_level(logging.INFO, "lora_studio")
    uploads = HubUploads(_cfg(tmp_path, huggingface_path_in_repo="/loras/emi/", huggingface_token=TOKEN))
    for name in ("emi-000001.safetensors", "emi.safetensors"):
        uploads.file(_saved(tmp_path, name, name.encode()))
    uploads.finish()
    assert hub.created == [("me/emi-lora", None, True)]  # sd-scripts: private unless visibility is "public"
    assert hub.tokens == [TOKEN]
    assert [(u["kind"], u["repo_id"], u["repo_type"], u["path"]) for u in hub.uploads] == [
        ("file", "me/emi-lora", None, "loras/emi/emi-000001.safetensors"),
        ("file", "me/emi-lora", None, "loras/emi/emi.safetensors")]
    assert hub.files[("me/emi-lora", "loras/emi/emi.safetensors")] == b"emi.safetensors"
    assert "uploaded loras/emi/emi.safetensors to the Hugging Face repository me/emi-lora" in caplog.text
    assert TOKEN not in caplog.text


def test_visibility_type_and_an_existing_repo(tmp_path, monkeypatch):
    public = FakeHub(tmp_path / "c1")
    monkeypatch.setattr(hub_upload, "hub_client", public.client)
    uploads = HubUploads(_cfg(tmp_path, huggingface_repo_visibility="public", huggingface_repo_type="dataset"))
    uploads.file(_saved(tmp_path, "a.safetensors"))
    assert public.created == [("me/emi-lora", "dataset", False)]
    assert public.uploads[0]["path"] == "a.safetensors"  # no path_in_repo: the top level
    assert public.uploads[0]["repo_type"] == "dataset"
    existing = FakeHub(tmp_path / "c2", existing=("me/emi-lora",))
    monkeypatch.setattr(hub_upload, "hub_client", existing.client)
    HubUploads(_cfg(tmp_path)).file(_saved(tmp_path, "b.safetensors"))
    assert existing.created == [] and existing.uploads[0]["path"] == "b.safetensors"


def test_states_are_uploaded_only_with_save_state_to_huggingface(tmp_path, hub, caplog):
    state = tmp_path / "emi-000002-state"
    state.mkdir()
    (state / "state.json").write_text("{}", encoding="utf-8")
    HubUploads(_cfg(tmp_path)).state(state)
    assert hub.uploads == []
    HubUploads(_cfg(tmp_path, save_state_to_huggingface=True)).state(state)
    assert [(u["kind"], u["path"]) for u in hub.uploads] == [("folder", "emi-000002-state")]
    assert hub.files[("me/emi-lora", "emi-000002-state/state.json")] == b"{}"
    HubUploads(build_config({"save_state_to_huggingface": True})).state(state)  # no repo: said, nothing sent
    assert len(hub.uploads) == 1
    assert "save_state_to_huggingface: no huggingface_repo_id to upload to; the states stay local" in caplog.text


def test_async_upload_returns_at_once_and_finish_waits_for_it(tmp_path, hub, caplog):
    caplog.set_level(logging.INFO, "lora_studio")
    release = threading.Event()
    hub.before_upload = lambda path: release.wait(30)
    uploads = HubUploads(_cfg(tmp_path, async_upload=True))
    start = time.monotonic()
    uploads.file(_saved(tmp_path, "emi-000001.safetensors"))
    assert time.monotonic() - start < 5 and hub.uploads == []  # training goes on while it uploads
    threading.Timer(0.3, release.set).start()
    uploads.file(_saved(tmp_path, "emi.safetensors"), wait=True)  # the final file: before the run ends
    assert [u["path"] for u in hub.uploads] == ["emi-000001.safetensors", "emi.safetensors"]  # in saving order
    assert {u["thread"] for u in hub.uploads} != {threading.current_thread().name}
    release.clear()
    uploads.file(_saved(tmp_path, "emi-000003.safetensors"))
    threading.Timer(0.3, release.set).start()
    uploads.finish()
    assert len(hub.uploads) == 3
    assert "waiting for 1 upload(s) to the Hugging Face repository me/emi-lora to finish" in caplog.text


def test_without_async_upload_each_upload_is_done_when_the_save_returns(tmp_path, hub):
    uploads = HubUploads(_cfg(tmp_path))
    uploads.file(_saved(tmp_path, "emi-000001.safetensors"))
    assert [u["path"] for u in hub.uploads] == ["emi-000001.safetensors"]


def test_a_refused_upload_is_said_once_and_keeps_the_files(tmp_path, hub, caplog):
    hub.refuse = True
    uploads = HubUploads(_cfg(tmp_path, async_upload=True, huggingface_token=TOKEN))
    files = [_saved(tmp_path, f"emi-00000{i}.safetensors", b"weights %d" % i) for i in (1, 2, 3)]
    for path in files:
        uploads.file(path)
    uploads.finish()  # no exception
    assert [p.read_bytes() for p in files] == [b"weights 1", b"weights 2", b"weights 3"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings  # the failure once, then the run's summary
    assert warnings[0].startswith("could not upload emi-000001.safetensors to the Hugging Face repository "
                                  "me/emi-lora (Refused: 403 Forbidden: you have no write access to me/emi-lora); "
                                  "training goes on and keeps its files here")
    assert warnings[1] == ("3 of 3 upload(s) to the Hugging Face repository me/emi-lora failed; not uploaded: "
                           "emi-000001.safetensors, emi-000002.safetensors, emi-000003.safetensors")
    assert TOKEN not in caplog.text


def test_the_token_is_masked_in_an_error_that_repeats_it(tmp_path, hub, caplog):
    def leak(path):
        raise ValueError(f"bad header Authorization: Bearer {TOKEN}")

    hub.before_upload = leak
    HubUploads(_cfg(tmp_path, huggingface_token=TOKEN)).file(_saved(tmp_path, "a.safetensors"))
    assert "Bearer ***" in caplog.text and TOKEN not in caplog.text


def test_uploads_run_with_the_hub_reachable_though_lora_studio_is_offline(tmp_path, hub):
    from huggingface_hub import constants

    assert constants.is_offline_mode()  # HF_HUB_OFFLINE=1, as the CLI and the tests set it
    HubUploads(_cfg(tmp_path)).file(_saved(tmp_path, "a.safetensors"))
    assert hub.offline_during_upload == [False]  # the upload the user asked for is let through
    assert constants.is_offline_mode()  # and nothing else afterwards


def test_no_network_with_the_real_client_is_said_once(tmp_path, monkeypatch, caplog):
    """huggingface_hub's own client against a closed port on this machine: an upload that cannot connect."""
    from huggingface_hub import HfApi

    monkeypatch.setattr(hub_upload, "hub_client", lambda token: HfApi(endpoint="http://127.0.0.1:9", token=token))
    uploads = HubUploads(_cfg(tmp_path, huggingface_token=TOKEN))
    path = _saved(tmp_path, "a.safetensors", b"kept")
    uploads.file(path)
    uploads.finish()
    assert uploads.failed == ["a.safetensors"] and path.read_bytes() == b"kept"
    (said,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("could not upload")]
    assert "me/emi-lora" in said and "offline mode is enabled" not in said and "Connect" in said
    assert TOKEN not in caplog.text


# ---------------------------------------------------------------- resume_from_huggingface
def test_the_resume_path_is_read_as_sd_scripts_reads_it():
    assert parse_hub_resume("me/emi-lora/loras/emi-000004-state") == ("me/emi-lora", "loras/emi-000004-state",
                                                                      None, None)
    assert parse_hub_resume("me/emi-lora/emi-state:v2") == ("me/emi-lora", "emi-state", "v2", None)
    assert parse_hub_resume("me/emi-lora/emi-state:main:dataset") == ("me/emi-lora", "emi-state", "main",
                                                                      "dataset")
    for bad in ("latest", "emi-state", "me/x/y:a:b:c"):
        with pytest.raises(UserError, match="is not <owner>/<name>/<state folder>"):
            parse_hub_resume(bad)


def test_a_missing_state_on_the_hub_stops_the_run_before_training(tmp_path, hub):
    cfg = build_config({"resume": "me/emi-lora/emi-state", "resume_from_huggingface": True})
    with pytest.raises(UserError, match="no files under me/emi-lora/emi-state"):
        download_state(cfg)
    hub.list_repo_files = lambda *a, **k: (_ for _ in ()).throw(Refused("401 Unauthorized"))
    with pytest.raises(UserError, match=r"could not download me/emi-lora/emi-state \(Refused: 401 Unauthorized\)"):
        download_state(cfg)


def test_the_gui_takes_a_state_on_the_hub_for_resume():
    from lora_studio.gui.form import check_form

    hub_state = {"resume": "me/emi-lora/emi-state", "resume_from_huggingface": True}
    assert "resume" not in check_form(hub_state, scan_dataset=False).problems
    assert "no state.json" in check_form({"resume": "me/emi-lora/emi-state"}, scan_dataset=False).problems["resume"]


# ---------------------------------------------------------------- training runs
def _write_toml(path: Path, settings: dict) -> Path:
    """The user's own TOML, token included (LoRA Studio itself never writes one)."""
    path.write_text(tomli_w.dumps({k: v for k, v in settings.items() if v is not None}), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def uploaded_run(tiny_models, tmp_path_factory):
    """One run that uploads to a fake Hub: a step file and state at step 3, the final file and state at step 6."""
    from lora_studio.demo import write_dataset

    root = tmp_path_factory.mktemp("hub-run")
    out = root / "out"
    settings = base_settings(tiny_models["folder"], write_dataset(root / "data", count=8, repeats=2), out,
                             save_every_n_steps=3, save_state=True, huggingface_repo_id="me/emi-lora",
                             huggingface_path_in_repo="emi", huggingface_token=TOKEN,
                             save_state_to_huggingface=True, logging_dir=str(root / "logs"), log_config=True)
    fake = FakeHub(root / "hf-cache")
    final_existed: list[bool] = []  # at each upload: was the final file saved yet?
    fake.before_upload = lambda path: final_existed.append((out / "test_lora.safetensors").exists())
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(hub_upload, "hub_client", fake.client)
        proc = run_cli("train", "--config", str(_write_toml(root / "run.toml", settings)))
    return {"hub": fake, "out": out, "logs": root / "logs", "proc": proc, "settings": settings,
            "final_existed": final_existed}


def test_a_run_uploads_its_files_and_states_where_sd_scripts_puts_them(uploaded_run):
    hub, out = uploaded_run["hub"], uploaded_run["out"]
    assert [(u["kind"], u["path"]) for u in hub.uploads] == [
        ("file", "emi/test_lora-step00000003.safetensors"), ("folder", "emi/test_lora-step00000003-state"),
        ("file", "emi/test_lora.safetensors"), ("folder", "emi/test_lora-state")]
    assert hub.created == [("me/emi-lora", None, True)] and set(hub.tokens) == {TOKEN}
    assert uploaded_run["final_existed"] == [False, False, True, True]  # no async_upload: the run waits for each
    for name in ("test_lora.safetensors", "test_lora-step00000003.safetensors"):
        assert hub.files[("me/emi-lora", f"emi/{name}")] == (out / name).read_bytes()
    for name in ("state.json", "state.safetensors"):
        assert hub.files[("me/emi-lora", f"emi/test_lora-state/{name}")] == (out / "test_lora-state" / name).read_bytes()
    assert "uploaded emi/test_lora.safetensors to the Hugging Face repository me/emi-lora" in uploaded_run["proc"].stderr


def test_the_token_is_in_no_file_the_run_writes_nor_in_its_log(uploaded_run):
    out, proc = uploaded_run["out"], uploaded_run["proc"]
    written = [p for folder in (out, uploaded_run["logs"]) for p in folder.rglob("*") if p.is_file()]
    assert {out / "test_lora_config.toml", out / "test_lora-state" / "state.json"} <= set(written)
    assert any("tfevents" in p.name for p in written)  # log_config: the settings went to TensorBoard
    for path in written:
        assert TOKEN.encode() not in path.read_bytes(), path
    assert TOKEN not in proc.stderr + proc.stdout
    with safe_open(str(out / "test_lora.safetensors"), "pt") as f:
        assert f.metadata()["ss_output_name"] == "test_lora" and TOKEN not in json.dumps(f.metadata())
    saved = (out / "test_lora_config.toml").read_text("utf-8")
    assert 'huggingface_repo_id = "me/emi-lora"' in saved and "huggingface_token" not in saved


def test_resume_from_the_hub_then_refused_async_uploads(uploaded_run, tmp_path, monkeypatch):
    """The step-3 state the run uploaded is downloaded to resume from; this run's uploads are refused (a read-only
    token): it finishes all the same, with its files, and says so once."""
    hub = FakeHub(tmp_path / "hf-cache", refuse=True)
    hub.files = dict(uploaded_run["hub"].files)
    monkeypatch.setattr(hub_upload, "hub_client", hub.client)
    out = tmp_path / "resumed"
    resumed = {**uploaded_run["settings"], "output_dir": str(out), "save_every_n_steps": None, "logging_dir": None,
               "log_config": False, "resume": "me/emi-lora/emi/test_lora-step00000003-state:main",
               "resume_from_huggingface": True, "async_upload": True}
    proc = run_cli("train", "--config", str(_write_toml(tmp_path / "resumed.toml", resumed)))
    downloaded = tmp_path / "hf-cache" / "me--emi-lora" / "main" / "emi" / "test_lora-step00000003-state"
    assert f"resuming from {downloaded}: step 3" in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["test_lora-state", "test_lora.safetensors",
                                                     "test_lora_config.toml", "test_lora_events.jsonl"]
    assert proc.stderr.count("could not upload") == 1  # the final file's refusal, said once
    assert ("2 of 2 upload(s) to the Hugging Face repository me/emi-lora failed; not uploaded: "
            "emi/test_lora.safetensors, emi/test_lora-state") in proc.stderr
    events = [json.loads(line) for line in (out / "test_lora_events.jsonl").read_text("utf-8").splitlines()]
    assert (events[-1]["type"], events[-1]["status"], events[-1]["step"]) == ("end", "completed", 6)
    assert hub.uploads == [] and TOKEN not in proc.stderr


def test_the_settings_load_from_an_sd_scripts_toml_and_the_token_is_never_saved():
    cfg = build_config({"huggingface_repo_id": "me/emi-lora", "huggingface_token": TOKEN,
                        "huggingface_repo_type": "", "huggingface_repo_visibility": "public",
                        "huggingface_path_in_repo": "", "save_state_to_huggingface": True,
                        "resume_from_huggingface": False, "async_upload": True})
    assert cfg.huggingface_token == TOKEN and cfg.async_upload is True
    text = dumps_config(cfg)
    assert "[huggingface]" in text and "async_upload = true" in text and TOKEN not in text
