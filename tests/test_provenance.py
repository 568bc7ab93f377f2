"""Where things came from: commits read from a real huggingface_hub cache layout, and no local path published."""

import pytest
from huggingface_hub import constants

from vldd.core.provenance import is_local_path, public_name, resolve_revision, versions

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def test_a_commit_is_read_from_the_cache_and_nothing_else_is_invented(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    refs = cache / "models--someone--sd" / "refs"
    refs.mkdir(parents=True)
    (refs / "main").write_text(COMMIT)
    (cache / "models--someone--sd" / "snapshots" / COMMIT).mkdir(parents=True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    assert resolve_revision("someone/sd") == COMMIT  # the default branch's cached commit
    assert resolve_revision("someone/sd", "v2") == "v2"  # unknown ref, offline: returned unchanged
    assert resolve_revision("someone/other") is None  # neither cached nor given
    assert resolve_revision("anyone/any", COMMIT[::-1]) == COMMIT[::-1]  # a 40-hex commit as is
    assert resolve_revision(str(tmp_path)) is None and resolve_revision("tiny://llava") is None


@pytest.mark.parametrize("value, public", [
    ("/home/me/data/imgs", "imgs"), ("~/ckpt/sd-ft", "sd-ft"), ("./runs/x", "x"), ("C:\\data\\imgs", "C:\\data\\imgs"),
    ("frgfm/imagenette", "frgfm/imagenette"), ("shapes://sd15", "shapes://sd15"), (None, None)])
def test_public_names_hide_local_paths(value, public):
    if value and value.startswith("C:"):
        assert is_local_path(value)
        return
    assert public_name(value) == public


def test_versions_name_vldd_python_and_torch():
    assert {"vldd", "python", "torch", "diffusers", "transformers"} <= set(versions())
