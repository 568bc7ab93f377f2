"""The run directory: atomic writes, per-stage state, and the manifest.

Layout of a run directory::

    RUN_DIR/
      config.yaml          the resolved DistillConfig
      manifest.json        config, models and revisions, versions, seeds, per-stage timings and counts
      captions/            captions as a `datasets.Dataset` (save_to_disk)
      finetune/seed<S>/    the Stable Diffusion fine-tuned on the captions for run seed S (`vldd.jobs.finetune` layout)
      dataset/             the distilled set (save_to_disk)
      preview.png          one row per class
      work/<stage>/        per-class results of each stage, plus `fingerprint.json` naming the stage's inputs
      .vldd.lock           while a vldd process writes the run: its pid and host (see `run_dir_lock`)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
LOCK = ".vldd.lock"


class RunDirBusyError(RuntimeError):
    """The run directory is being written by another live vldd process."""


@contextmanager
def atomic_path(path: str | Path, suffix: str = ""):
    """Yields a temporary path beside `path`; on success it is renamed onto `path` (file or directory)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)) / f"out{suffix}"
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: str | Path, default: Any = None) -> Any:
    path = Path(path)
    if not path.is_file():
        return default
    return json.loads(path.read_text())


def read_manifest(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{str(run_dir)!r} is not a vldd run directory: {MANIFEST} is missing")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{str(path)!r} could not be read ({err}); expected the JSON manifest vldd writes") from err
    if not isinstance(manifest, dict):
        raise ValueError(f"{str(path)!r} holds a {type(manifest).__name__}; expected the JSON object vldd writes")
    return manifest


def update_manifest(run_dir: str | Path, **sections: Any) -> dict[str, Any]:
    """Merges top-level `sections` into the manifest (created when missing) and writes it atomically."""
    path = Path(run_dir) / MANIFEST
    manifest = read_json(path, default={})
    manifest.update(sections)
    write_json(path, manifest)
    return manifest


def work_dir(run_dir: str | Path, name: str) -> Path:
    """Where stage `name` of a run keeps its per-class results (`StageDir`'s default place), for readers: opening a
    `StageDir` writes its fingerprint and may clear results."""
    return Path(run_dir) / "work" / name


def result_file(folder: str | Path, label: int, suffix: str) -> Path:
    """Class `label`'s result in a stage's folder (`work_dir`, or `StageDir.path`)."""
    return Path(folder) / f"{label:06d}{suffix}"


class StageDir:
    """Per-class results of one stage, invalidated when the stage's fingerprint changes.

    `fingerprint` names everything the stage's results depend on (its settings and upstream fingerprints); `path`
    places the results elsewhere than RUN_DIR/work/<name> (the fine-tuned model lives in RUN_DIR/finetune). Opening
    a stage whose stored fingerprint differs deletes its stale results, so a changed setting recomputes that stage
    and, through the fingerprint chain, everything downstream, but nothing upstream.
    """

    def __init__(self, run_dir: str | Path, name: str, fingerprint: str, path: str | Path | None = None):
        self.path = Path(path) if path is not None else work_dir(run_dir, name)
        self.name = name
        self.fingerprint = fingerprint
        stored = read_json(self.path / "fingerprint.json", default={})
        self.cleared = stored.get("fingerprint") not in (None, fingerprint)  # stale results were deleted
        if self.cleared:
            logger.info("stage %r: settings changed (%s -> %s), recomputing", name, stored["fingerprint"], fingerprint)
            shutil.rmtree(self.path)
            stored = {}
        self.computed_with: list[dict[str, Any]] = stored.get("computed_with", [])
        self.path.mkdir(parents=True, exist_ok=True)
        if stored.get("fingerprint") != fingerprint:
            self._write()

    def _write(self) -> None:
        write_json(self.path / "fingerprint.json", {"fingerprint": self.fingerprint,
                                                    "computed_with": self.computed_with})

    def record(self, settings: dict[str, Any]) -> None:
        """Adds `settings` (those left out of the fingerprint) to the record of what computed this stage's results;
        called before computing, so every result on disk was computed with one of the recorded settings."""
        if settings not in self.computed_with:
            self.computed_with.append(dict(settings))
            self._write()

    def file(self, label: int, suffix: str) -> Path:
        return result_file(self.path, label, suffix)

    def has(self, label: int, suffix: str) -> bool:
        return self.file(label, suffix).exists()


def check_output_dir(path: str | Path, what: str = "run directory") -> Path:
    """`path` as a Path, after checking it can be written to: absent, or a directory this user can write.

    Args:
        path: the directory.
        what: how error messages name it.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} {str(path)!r} is a file; expected a directory (new, or one vldd wrote)")
    if path.is_dir() and not os.access(path, os.R_OK | os.W_OK | os.X_OK):
        raise ValueError(f"{what} {str(path)!r} cannot be read and written by this user; expected a directory you "
                         "can write to")
    if not path.exists():  # it will be created: its nearest existing ancestor must be a directory this user can write
        parent = next(p for p in path.absolute().parents if p.exists())
        if not parent.is_dir():
            raise ValueError(f"cannot create {what} {str(path)!r}: {str(parent)!r} is a file, not a directory")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise ValueError(f"cannot create {what} {str(path)!r}: this user cannot write to {str(parent)!r}")
    return path


def _read_lock(lock: Path) -> dict[str, Any] | None:
    try:
        holder = json.loads(lock.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # unreadable or half-written by a crashed process: stale
    return holder if isinstance(holder, dict) else {}


def _alive(holder: dict[str, Any]) -> bool:
    """Whether the lock's holder still runs; a holder on another host is taken to (its pid cannot be checked)."""
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    if holder.get("host") != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def _create_lock(lock: Path, content: str) -> bool:
    """Creates `lock` holding `content` in one step (hard link of a finished file); False when it exists."""
    fd, tmp = tempfile.mkstemp(prefix=f"{LOCK}.", suffix=".tmp", dir=lock.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(content)
        os.link(tmp, lock)
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)


@contextmanager
def run_dir_lock(run_dir: str | Path, *, launch: str | None = None):
    """Holds `RUN_DIR/.vldd.lock` (the holder's pid and host) while this process writes the run directory.

    A lock whose holder has died is taken over. The processes of one multi-process launch share the lock when they
    pass the same `launch` key (e.g. the launch's rendezvous address): the first to arrive creates it, and only it
    removes it on exit.

    Args:
        run_dir: the run directory; created when missing.
        launch: names the multi-process launch this process belongs to; None = a single process.

    Raises:
        RunDirBusyError: another live process holds the lock.
        ValueError: `run_dir` is a file, or a directory this user cannot write.
    """
    path = check_output_dir(run_dir)
    path.mkdir(parents=True, exist_ok=True)
    lock = path / LOCK
    me = {"pid": os.getpid(), "host": socket.gethostname(), "launch": launch}
    owner = False
    for _ in range(5):  # a few rounds: another process may create or remove the lock between our steps
        if _create_lock(lock, json.dumps(me)):
            owner = True
            break
        holder = _read_lock(lock)
        if holder is None:
            continue
        if launch is not None and holder.get("launch") == launch:
            break  # a process of our own launch holds it
        if _alive(holder):
            raise RunDirBusyError(
                f"run directory {str(path)!r} is in use by vldd process {holder.get('pid')} on "
                f"{holder.get('host')} (lock file {str(lock)!r}); wait for it to finish, or use another run "
                "directory (delete the lock file only if that process is gone)")
        stale = lock.with_name(f"{LOCK}.{os.getpid()}.stale")
        try:
            os.replace(lock, stale)  # claim the stale lock; only one process can move it away
        except FileNotFoundError:
            continue
        if _read_lock(stale) == holder:
            logger.warning("taking over the lock of %s: vldd process %s is gone", path, holder.get("pid"))
        else:  # moved a fresh lock of another process away: put it back
            try:
                os.link(stale, lock)
            except FileExistsError:
                pass
        stale.unlink(missing_ok=True)
    else:
        raise RunDirBusyError(f"run directory {str(path)!r}: could not take the lock file {str(lock)!r}")
    try:
        yield lock
    finally:
        if owner and (_read_lock(lock) or {}).get("pid") == os.getpid():
            lock.unlink(missing_ok=True)
