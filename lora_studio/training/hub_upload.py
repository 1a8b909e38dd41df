"""Uploads to the Hugging Face Hub as sd-scripts makes them, and the download of a state to resume from.

What sd-scripts does (``library/huggingface_util.py``, called from ``train_network.py`` and ``library/train_util.py``):
each saved LoRA file goes to ``<huggingface_path_in_repo>/<file name>`` in ``huggingface_repo_id``, which is created
first when it does not exist (private unless ``huggingface_repo_visibility`` is ``public``); with
``save_state_to_huggingface`` each saved state folder goes beside it; ``async_upload`` uploads in the background,
except the final file, which is uploaded before the run ends. ``resume_from_huggingface`` reads ``resume`` as
``<owner>/<name>/<path in repo>[:<revision>[:<repo type>]]`` and downloads the files under that path.

Here an upload never fails the run and never touches the local files: the first failure is said once, as a warning
naming the repository, and the end of the run lists what was not uploaded. Uploads go one at a time, in the order
the files were saved (two commits at once to one branch can refuse each other). The token stays in the client.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path, PurePosixPath

from ..config import Config
from ..errors import UserError

log = logging.getLogger("lora_studio")

_online_lock = threading.Lock()
_online_users = 0
_offline_before = False


def hub_client(token: str | None):
    """The Hub client: huggingface_hub's ``HfApi`` (tests put a fake one in its place). Without a token it uses
    HF_TOKEN or the login that ``hf auth login`` saved."""
    from huggingface_hub import HfApi

    return HfApi(token=token or None)


@contextlib.contextmanager
def hub_reachable():
    """LoRA Studio turns huggingface_hub's offline mode on (HF_HUB_OFFLINE=1, read once, when huggingface_hub is
    imported) so that nothing is downloaded by accident; a transfer the user asked for runs with it off."""
    global _online_users, _offline_before
    from huggingface_hub import constants

    with _online_lock:
        if _online_users == 0:
            _offline_before = constants.HF_HUB_OFFLINE
            constants.HF_HUB_OFFLINE = False
        _online_users += 1
    try:
        yield
    finally:
        with _online_lock:
            _online_users -= 1
            if _online_users == 0:
                constants.HF_HUB_OFFLINE = _offline_before


def _reason(exc: BaseException, token: str | None) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()[0] if str(exc) else type(exc).__name__
    return text.replace(token, "***") if token else text


class HubUploads:
    """The uploads of one run (main process only). ``file`` and ``state`` return at once with ``async_upload``,
    after the upload without it; ``finish`` waits for what is still going and says what was not uploaded."""

    def __init__(self, cfg: Config):
        self.repo_id = cfg.huggingface_repo_id or None
        self.repo_type = cfg.huggingface_repo_type or None  # None: a model repository
        self.private = cfg.huggingface_repo_visibility != "public"
        self.folder = (cfg.huggingface_path_in_repo or "").strip("/")
        self.states = bool(cfg.save_state_to_huggingface and self.repo_id)
        self.background = bool(cfg.async_upload)
        self._token = cfg.huggingface_token or None
        self._client = None
        self._repo_ready = False
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[Future] = []
        self.uploaded: list[str] = []
        self.failed: list[str] = []
        if cfg.save_state_to_huggingface and not self.repo_id:
            log.warning("save_state_to_huggingface: no huggingface_repo_id to upload to; the states stay local")

    def where(self) -> str:
        kind = f" ({self.repo_type})" if self.repo_type not in (None, "model") else ""
        return f"the Hugging Face repository {self.repo_id}{kind}"

    def file(self, path: Path, wait: bool = False) -> None:
        """A saved LoRA file; ``wait``: uploaded before this returns even with async_upload (the final file)."""
        if self.repo_id:
            self._submit(Path(path), wait or not self.background)

    def state(self, folder: Path) -> None:
        """A saved state folder (save_state_to_huggingface)."""
        if self.states:
            self._submit(Path(folder), not self.background)

    def _submit(self, path: Path, wait: bool) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hub-upload")
        dest = "/".join(p for p in (self.folder, path.name) if p)
        future = self._pool.submit(self._upload, path, dest)
        if wait:
            future.result()
        else:
            self._pending.append(future)

    def _upload(self, path: Path, dest: str) -> None:
        """One upload, on the upload thread; an exception is said (the first time) and kept, never raised."""
        try:
            with hub_reachable():
                if self._client is None:
                    self._client = hub_client(self._token)
                client = self._client
                if not self._repo_ready:
                    if not client.repo_exists(self.repo_id, repo_type=self.repo_type):
                        client.create_repo(self.repo_id, repo_type=self.repo_type, private=self.private,
                                           exist_ok=True)
                        log.info("created %s (%s)", self.where(), "private" if self.private else "public")
                    self._repo_ready = True
                if path.is_dir():
                    client.upload_folder(repo_id=self.repo_id, repo_type=self.repo_type, folder_path=str(path),
                                         path_in_repo=dest, commit_message=f"Upload {dest}")
                else:
                    client.upload_file(path_or_fileobj=str(path), path_in_repo=dest, repo_id=self.repo_id,
                                       repo_type=self.repo_type, commit_message=f"Upload {dest}")
        except Exception as exc:  # no network, offline, 401/403, a full disk on the other side: never the run's end
            if not self.failed:
                log.warning("could not upload %s to %s (%s); training goes on and keeps its files here; the end of "
                            "the run lists what was not uploaded", dest, self.where(), _reason(exc, self._token))
            self.failed.append(dest)
            return
        self.uploaded.append(dest)
        log.info("uploaded %s to %s", dest, self.where())

    def finish(self) -> None:
        """Wait for the background uploads (the process must not end in the middle of one); say what failed."""
        running = sum(not f.done() for f in self._pending)
        if running:
            log.info("waiting for %d upload(s) to %s to finish", running, self.where())
        for future in self._pending:
            future.result()
        self._pending.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self.failed:
            log.warning("%d of %d upload(s) to %s failed; not uploaded: %s", len(self.failed),
                        len(self.failed) + len(self.uploaded), self.where(), ", ".join(self.failed))


def parse_hub_resume(resume: str) -> tuple[str, str, str | None, str | None]:
    """sd-scripts' ``--resume`` with ``--resume_from_huggingface``: ``owner/name/path[:revision[:repo_type]]`` ->
    ``(repo_id, path, revision, repo_type)``; an empty revision or type means the default (main, model)."""
    head, *rest = resume.strip().split(":")
    parts = [p for p in head.split("/") if p]
    if len(parts) < 2 or len(rest) > 2:
        raise UserError(f"resume_from_huggingface: resume = {resume!r} is not <owner>/<name>/<state folder>"
                        "[:<revision>[:<repo type>]] (e.g. me/my-lora/emi-000004-state:main:model)")
    revision = rest[0] if rest and rest[0] else None
    repo_type = rest[1] if len(rest) > 1 and rest[1] else None
    return f"{parts[0]}/{parts[1]}", "/".join(parts[2:]), revision, repo_type


def download_state(cfg: Config) -> Path:
    """resume_from_huggingface: the files under the state path ``cfg.resume`` names, downloaded into the Hugging
    Face cache as sd-scripts downloads them; returns the local folder that holds them."""
    repo_id, folder, revision, repo_type = parse_hub_resume(cfg.resume)
    where = f"{repo_id}/{folder}" + (f"@{revision}" if revision else "")
    log.info("downloading the state %s from the Hugging Face Hub", where)
    token = cfg.huggingface_token or None
    try:
        with hub_reachable():
            client = hub_client(token)
            names = [n for n in client.list_repo_files(repo_id, revision=revision, repo_type=repo_type)
                     if not folder or n == folder or n.startswith(folder + "/")]
            local = [client.hf_hub_download(repo_id, n, revision=revision, repo_type=repo_type) for n in names]
    except Exception as exc:
        raise UserError(f"resume_from_huggingface: could not download {where} ({_reason(exc, token)})") from None
    if not names:
        raise UserError(f"resume_from_huggingface: no files under {where} (resume names <owner>/<name>/<state "
                        "folder>, as uploaded with save_state_to_huggingface)")
    # the snapshot folder the files were downloaded into, then the state's folder in it
    root = Path(local[0]).parents[len(PurePosixPath(names[0]).parts) - 1]
    return root / folder if folder else root
