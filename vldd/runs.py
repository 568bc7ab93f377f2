"""The run directory: atomic writes, per-stage state, and the manifest.

Layout of a run directory::

    RUN_DIR/
      config.yaml          the resolved DistillConfig
      manifest.json        config, models and revisions, versions, seeds, per-stage timings and counts
      captions/            captions as a `datasets.Dataset` (save_to_disk)
      finetune/seed<S>/    the Stable Diffusion fine-tuned on the captions for run seed S (`vldd.finetuning` layout)
      dataset/             the distilled set (save_to_disk)
      preview.png          one row per class
      work/<stage>/        per-class results of each stage, plus `fingerprint.json` naming the stage's inputs
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"


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
    return json.loads(path.read_text())


def update_manifest(run_dir: str | Path, **sections: Any) -> dict[str, Any]:
    """Merges top-level `sections` into the manifest (created when missing) and writes it atomically."""
    path = Path(run_dir) / MANIFEST
    manifest = read_json(path, default={})
    manifest.update(sections)
    write_json(path, manifest)
    return manifest


class StageDir:
    """Per-class results of one stage, invalidated when the stage's fingerprint changes.

    `fingerprint` names everything the stage's results depend on (its settings and upstream fingerprints); `path`
    places the results elsewhere than RUN_DIR/work/<name> (the fine-tuned model lives in RUN_DIR/finetune). Opening
    a stage whose stored fingerprint differs deletes its stale results, so a changed setting recomputes that stage
    and, through the fingerprint chain, everything downstream, but nothing upstream.
    """

    def __init__(self, run_dir: str | Path, name: str, fingerprint: str, path: str | Path | None = None):
        self.path = Path(path) if path is not None else Path(run_dir) / "work" / name
        self.name = name
        self.fingerprint = fingerprint
        stored = read_json(self.path / "fingerprint.json", default={}).get("fingerprint")
        if stored is not None and stored != fingerprint:
            logger.info("stage %r: settings changed (%s -> %s), recomputing", name, stored, fingerprint)
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        if stored != fingerprint:
            write_json(self.path / "fingerprint.json", {"fingerprint": fingerprint})

    def file(self, label: int, suffix: str) -> Path:
        return self.path / f"{label:06d}{suffix}"

    def has(self, label: int, suffix: str) -> bool:
        return self.file(label, suffix).exists()
