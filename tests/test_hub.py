"""Publishing to the Hub: cards offline, then push/load through the real clients against the local test Hub."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import uuid
from pathlib import Path

import datasets
import numpy as np
import pytest
from helpers.hub_fixtures import point_clients_at
from helpers.hub_server import validate_card_yaml
from huggingface_hub import DatasetCard
from PIL import Image

from vldd.cli.commands import main
from vldd.configs.distill import DistillConfig
from vldd.core.runs import write_json, write_text
from vldd.hub import captions as hub_captions
from vldd.hub import cards as hub_cards
from vldd.hub import names as hub_names
from vldd.hub import push as hub

CLASS_NAMES = ["circle", "square", "triangle", "cross", "stripes"]
PROVENANCE = ["class_name", "prompt", "cluster", "cluster_size", "seed", "source_dataset", "source_row",
              "text_fallback"]


@pytest.fixture
def run_factory(tmp_path):
    """Builds run directories with the pipeline's layout (manifest, config, dataset/, captions/, preview.png)."""

    def make(name: str = "run", *, ipc: int = 2, seed: int = 0, classes=(0, 2), size: int = 16,
             license: str | None = "mit", evaluation: list[dict] | None = None) -> Path:
        run = tmp_path / name
        config = DistillConfig(output=str(run), ipc=ipc, seed=seed)
        config.data.classes = list(classes)
        rng = np.random.default_rng(seed + 100)
        rows = [(label, c) for label in classes for c in range(ipc)]
        images = [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in rows]
        features = datasets.Features({
            "image": datasets.Image(), "label": datasets.ClassLabel(names=CLASS_NAMES),
            "class_name": datasets.Value("string"), "prompt": datasets.Value("string"),
            "cluster": datasets.Value("int32"), "cluster_size": datasets.Value("int32"),
            "seed": datasets.Value("int64"), "source_dataset": datasets.Value("string"),
            "source_row": datasets.Value("int64"), "text_fallback": datasets.Value("string")})
        dataset = datasets.Dataset.from_dict({
            "image": images, "label": [label for label, _ in rows],
            "class_name": [CLASS_NAMES[label] for label, _ in rows],
            "prompt": [f"a {CLASS_NAMES[label]} drawn in colour {c}" for label, c in rows],
            "cluster": [c for _, c in rows], "cluster_size": [5 + c for _, c in rows], "seed": [seed] * len(rows),
            "source_dataset": ["sample"] * len(rows), "source_row": [7 * label + c for label, c in rows],
            "text_fallback": [""] * len(rows)}, features=features, split="train")
        dataset.save_to_disk(str(run / "dataset"))
        captions = datasets.Dataset.from_dict({
            "source_index": list(range(6)), "label": [classes[i % len(classes)] for i in range(6)],
            "caption": [f"caption number {i}" for i in range(6)], "captioner": ["tiny://llava"] * 6,
            "prompt": ["Describe the shape."] * 6}, features=datasets.Features({
                "source_index": datasets.Value("int64"), "label": datasets.ClassLabel(names=CLASS_NAMES),
                "caption": datasets.Value("string"), "captioner": datasets.Value("string"),
                "prompt": datasets.Value("string")}))
        captions.save_to_disk(str(run / "captions"))
        Image.fromarray(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)).save(run / "preview.png")
        write_text(run / "config.yaml", config.to_yaml())
        manifest = {
            "vldd_version": "0.1.0", "config": config.to_dict(),
            "source": {"dataset": "sample", "config_name": None, "split": "train", "revision": None,
                       "class_names": CLASS_NAMES, "classes": list(classes), "license": license},
            "models": {"captioner": {"id": "llava-hf/llava-1.5-7b-hf", "revision": "a" * 40},
                       "diffusion": {"id": "stable-diffusion-v1-5/stable-diffusion-v1-5", "revision": "b" * 40},
                       "lora": None},
            "tiny": False, "versions": {"vldd": "0.1.0", "datasets": datasets.__version__},
            "seeds": {"run": seed}, "timings": {"caption": 1.5, "generate": 2.25},
            "counts": {"classes": len(classes)}}
        if evaluation is not None:
            manifest["evaluation"] = evaluation
        write_json(run / "manifest.json", manifest)
        return run

    return make


def snapshot(folder: Path) -> dict[str, str]:
    """Path -> sha256 of every file below `folder`."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def load(repo_id: str, tmp_path: Path, name: str | None = None, token: str | None = None):
    return datasets.load_dataset(repo_id, name, split="train", token=token, cache_dir=str(tmp_path / "load-cache"),
                                 download_mode="force_redownload")


def assert_same_rows(published, local) -> None:
    assert published.num_rows == local.num_rows
    assert published.features["label"].names == local.features["label"].names
    assert published["label"] == local["label"]
    for column in PROVENANCE:
        assert published[column] == local[column], column
    for ours, theirs in zip(published["image"], local["image"], strict=True):
        assert np.array_equal(np.asarray(ours), np.asarray(theirs))


def hub_card(hub_server, repo_id: str) -> DatasetCard:
    return DatasetCard(hub_server.server.files(repo_id)["README.md"].decode())


# --- offline: names and cards --------------------------------------------------------------------------------------

def test_names_and_size_categories():
    assert hub_names.source_short_name("frgfm/imagenette") == "imagenette"
    assert hub_names.source_short_name("/data/My Images/") == "my-images"
    assert hub_names.source_short_name("ILSVRC/imagenet-1k") == "imagenet-1k"
    manifest = {"config": {"ipc": 10, "seed": 1, "data": {"dataset": "x"}}, "source": {"dataset": "frgfm/imagenette"}}
    assert hub_names.default_repo_id(manifest, "alice") == "alice/imagenette-vldd-ipc10"
    assert hub_names.default_repo_id(manifest, "alice", kind="captions") == "alice/imagenette-vldd-captions"
    assert hub_names.default_config_name(manifest) == "ipc10-seed1"
    assert [hub_cards.size_category(n) for n in (0, 999, 1000, 10_000, 1_280_000)] == [
        "n<1K", "n<1K", "1K<n<10K", "10K<n<100K", "1M<n<10M"]
    published = hub.public_manifest({"config": {"output": "/home/a/runs/x", "data": {"dataset": "/srv/imgs"},
                                                "generation": {"model": "~/ckpt/sd-ft", "lora": None}},
                                     "source": {"dataset": "/srv/imgs"}, "models": {"lora": None}})
    assert published["config"]["output"] == "x" and published["source"]["dataset"] == "imgs"
    assert published["config"]["generation"] == {"model": "sd-ft", "lora": None}


def test_render_dataset_card_is_pure_and_complete(run_factory):
    import json

    evaluated = json.loads((run_factory("a", evaluation=[{
        "protocol": "hard-label (Minimax/IDC)", "student": "ResNetAP-10", "best_mean": 64.8, "best_std": 1.2,
        "final_mean": 63.9, "final_std": 0.9, "epochs": 2000, "results_file": "/home/me/x.json",
        "baselines": {"random_real": {"best_mean": 54.2, "best_std": 0.5, "final_mean": 53.0}}}]) /
        "manifest.json").read_text())
    plain = json.loads((run_factory("b", seed=1, license=None) / "manifest.json").read_text())
    metadata = {"configs": [{"config_name": "ipc2-seed0", "data_files": [{"split": "train", "path": "ipc2-seed0/*"}],
                             "default": True},
                            {"config_name": "ipc2-seed1", "data_files": [{"split": "train", "path": "ipc2-seed1/*"}]}],
                "dataset_info": [{"config_name": "ipc2-seed0", "features": [{"name": "image", "dtype": "image"}]}]}
    runs = [hub_cards.PublishedRun("ipc2-seed1", plain, 4),
            hub_cards.PublishedRun("ipc2-seed0", evaluated, 4, "https://x/p.png")]
    text = hub_cards.render_dataset_card(runs, "alice/sample-vldd-ipc2", default_config="ipc2-seed0", metadata=metadata)
    assert text == hub_cards.render_dataset_card(runs, "alice/sample-vldd-ipc2", default_config="ipc2-seed0",
                                           metadata=metadata)
    assert validate_card_yaml(text) == []
    data = DatasetCard(text).data
    assert data.license == "unknown"  # one source licence is unknown: flagged, not guessed
    assert data.task_categories == ["image-classification"] and data.size_categories == ["n<1K"]
    assert data.source_datasets == ["sample"] and "VLCP" in data.pretty_name
    assert data.tags == ["dataset-distillation", "vldd", "ipc-2", "synthetic"]
    assert data.configs == metadata["configs"] and data.dataset_info == metadata["dataset_info"]
    body = DatasetCard(text).text
    for expected in ("Licence unknown", "2506.23580", "Zou, Yawen", "llava-hf/llava-1.5-7b-hf", "a" * 40,
                     "stable-diffusion-v1-5/stable-diffusion-v1-5", "b" * 40, "`generation.guidance_scale`",
                     "`prototypes.contamination`", "hard-label (Minimax/IDC)", "64.80 ± 1.20", "63.90 ± 0.90",
                     "Not evaluated", '"alice/sample-vldd-ipc2", "ipc2-seed1"', "![Preview of ipc2-seed0",
                     "https://x/p.png", "2 classes × 2 images per class", "diffusion model", "Limitations",
                     "circle (0), triangle (2)", datasets.__version__, "baseline: random_real", "54.20 ± 0.50",
                     "epochs: 2000"):
        assert expected in body, expected
    assert "/home/me" not in body
    assert body.index("### Configuration `ipc2-seed0`") < body.index("### Configuration `ipc2-seed1`")
    assert "output" not in [line.split("`")[1] for line in body.splitlines() if line.startswith("| `output`")]


def test_captions_card_and_validation(run_factory):
    import json

    run = run_factory()
    manifest = json.loads((run / "manifest.json").read_text())
    text = hub_cards.render_captions_card(manifest, "alice/sample-vldd-captions", 6)
    assert validate_card_yaml(text) == []
    data = DatasetCard(text).data
    assert data.license == "mit" and data.task_categories == ["image-to-text"]
    assert "--caption.from_hub alice/sample-vldd-captions" in text and "llava-hf/llava-1.5-7b-hf" in text

    captions = hub_captions.load_published_captions(run, class_names=CLASS_NAMES)  # a run directory works too
    assert captions["caption"][0] == "caption number 0"
    with pytest.raises(ValueError, match="differ from the source"):
        hub_captions.load_published_captions(run / "captions", class_names=["a", "b"])
    with pytest.raises(ValueError, match=r"missing columns \['caption'\]"):
        hub_captions.validate_captions(captions.remove_columns("caption"))
    with pytest.raises(ValueError, match="'source_index' must be an integer"):
        hub_captions.validate_captions(captions.cast_column("source_index", datasets.Value("string")))


# --- against the local test Hub ------------------------------------------------------------------------------------

def test_push_roundtrip_configs_and_repush(hub_server, run_factory, tmp_path):
    run = run_factory("seed0", evaluation=[{"protocol": "soft-label (RDED)", "student": "ResNet-18",
                                            "best_mean": 40.0, "best_std": 1.0}])
    before = snapshot(run)
    local = datasets.load_from_disk(str(run / "dataset"))

    # 1. First push: default name, default configuration, several shards.
    result = hub.push_distilled(run, token=hub_server.token, max_shard_size="1KB")
    repo = "tester/sample-vldd-ipc2"
    assert (result.repo_id, result.config_name, result.num_rows) == (repo, "ipc2-seed0", 4)
    assert snapshot(run) == before  # the run directory is only read
    files = hub_server.server.files(repo)
    shards = sorted(p for p in files if p.startswith("ipc2-seed0/"))
    assert len(shards) > 1 and all(p.endswith(".parquet") for p in shards)
    assert_same_rows(load(repo, tmp_path), local)

    card = hub_card(hub_server, repo)
    card.validate()  # the Hub's YAML check (POST /api/validate-yaml)
    assert [c["config_name"] for c in card.data.configs] == ["ipc2-seed0"]
    assert card.data.dataset_info["features"] and card.data.license == "mit"
    assert "soft-label (RDED)" in card.text and "40.00 ± 1.00" in card.text
    preview_url = f"{hub_server.url}/datasets/{repo}/resolve/main/vldd/ipc2-seed0/preview.png"
    assert f"]({preview_url})" in card.text
    assert files["vldd/ipc2-seed0/preview.png"] == (run / "preview.png").read_bytes()
    assert b'"output": "seed0"' in files["vldd/ipc2-seed0/manifest.json"]  # no local path published

    # 2. A second run as a named configuration: the default stays, both load, the card describes both.
    other = run_factory("seed1", seed=1, classes=(1, 3, 4))
    second = hub.push_distilled(other, repo, token=hub_server.token)
    assert second.config_name == "ipc2-seed1"
    card = hub_card(hub_server, repo)
    assert {c["config_name"]: c.get("default", False) for c in card.data.configs} == {
        "ipc2-seed0": True, "ipc2-seed1": False}
    assert len(card.data.dataset_info) == 2 and "Not evaluated" in card.text and "soft-label (RDED)" in card.text
    assert_same_rows(load(repo, tmp_path, "ipc2-seed1"), datasets.load_from_disk(str(other / "dataset")))
    assert_same_rows(load(repo, tmp_path), local)

    # 3. Re-push the default configuration with fewer shards: old shards are gone, it is still the default.
    hub.push_distilled(run, repo, token=hub_server.token)
    files = hub_server.server.files(repo)
    assert sorted(p for p in files if p.startswith("ipc2-seed0/")) == ["ipc2-seed0/train-00000-of-00001.parquet"]
    card = hub_card(hub_server, repo)
    assert [c.get("default", False) for c in card.data.configs] == [True, False]
    assert_same_rows(load(repo, tmp_path), local)

    # 4. Make the other configuration the default; a named configuration of our choice works too.
    hub.push_distilled(other, repo, token=hub_server.token, default=True)
    assert_same_rows(load(repo, tmp_path), datasets.load_from_disk(str(other / "dataset")))
    hub.push_distilled(run, repo, config_name="best", token=hub_server.token)
    assert [c["config_name"] for c in hub_card(hub_server, repo).data.configs] == ["best", "ipc2-seed0", "ipc2-seed1"]
    assert_same_rows(load(repo, tmp_path, "best"), local)
    assert snapshot(run) == before


def test_captions_roundtrip(hub_server, run_factory, tmp_path, capsys, monkeypatch):
    run = run_factory()
    monkeypatch.setenv("HF_TOKEN", hub_server.token)
    assert main(["push", str(run), "--captions", "--quiet"]) == 0
    repo = "tester/sample-vldd-captions"
    assert repo in capsys.readouterr().out
    published = hub_captions.load_published_captions(repo, class_names=CLASS_NAMES)
    local = datasets.load_from_disk(str(run / "captions"))
    assert published.features == local.features and published.to_dict() == local.to_dict()
    card = hub_card(hub_server, repo)
    card.validate()
    assert card.data.configs[0]["config_name"] == "default" and card.data.dataset_info
    assert "image-to-text" in card.data.task_categories and "--caption.from_hub" in card.text


def test_push_without_token_is_a_clear_error(hub_server, run_factory, capsys, monkeypatch):
    run = run_factory()
    with pytest.raises(hub_names.HubAuthError, match=r"No Hugging Face token found.*hf auth login.*HF_TOKEN"):
        hub.push_distilled(run)
    assert main(["push", str(run)]) == 2
    err = capsys.readouterr().err
    assert "No Hugging Face token found" in err and "Traceback" not in err
    with pytest.raises(hub_names.HubAuthError, match="read-only"):
        hub.push_distilled(run, token=hub_server.read_token)
    with pytest.raises(hub_names.HubAuthError, match="rejected as invalid"):
        hub.push_distilled(run, token="hf_not_a_real_token")
    with pytest.raises(hub_names.HubAuthError, match="refused to let this token write to .someone/x. \\(HTTP 403"):
        hub.push_distilled(run, "someone/x", token=hub_server.token)
    assert hub_server.server.state.repos == {}
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(hub_names.HubError, match="unset HF_HUB_OFFLINE"):
        hub.push_distilled(run, token=hub_server.token)


def test_token_never_leaks(hub_server, run_factory, tmp_path, caplog, capfd, monkeypatch):
    run = run_factory()
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("HF_TOKEN", hub_server.token)
    assert main(["-v", "push", str(run), "--private"]) == 0
    assert main(["-v", "push", str(run), "--captions"]) == 0
    token = hub_server.token.encode()
    out, err = capfd.readouterr()
    assert "tester/sample-vldd-ipc2" in out
    assert hub_server.token not in caplog.text + out + err
    assert all(token not in p.read_bytes() for p in run.rglob("*") if p.is_file())
    assert all(token not in data for data in hub_server.server.all_bytes())
    assert hub_server.server.repo("tester/sample-vldd-ipc2").private


def test_dropped_connections_are_retried_and_a_rerun_completes(hub_server, run_factory, tmp_path, monkeypatch,
                                                               caplog):
    monkeypatch.setattr(hub_names, "RETRY_BASE_SECONDS", 0.01)
    caplog.set_level(logging.WARNING)
    run = run_factory()
    before = snapshot(run)
    repo = "tester/sample-vldd-ipc2"
    server = hub_server.server

    # 1. A connection dropped mid-upload and one dropped on the data commit: retried within the same push.
    server.fail_next("PUT", r"^/_lfs/upload/")
    server.fail_next("POST", rf"^/api/datasets/{repo}/commit/main$")
    hub.push_distilled(run, token=hub_server.token)
    assert all(f.remaining == 0 for f in server.state.faults)
    assert len(server.requests("PUT", r"^/_lfs/upload/")) >= 2  # huggingface_hub's own backoff re-sent the shard
    assert "could not upload the 'ipc2-seed0' shards" in caplog.text  # vldd's retry re-ran the data step
    assert_same_rows(load(repo, tmp_path), datasets.load_from_disk(str(run / "dataset")))

    # 2. A push that keeps failing stops with a clear error and leaves the run untouched; running it again completes.
    server.fail_next("POST", rf"^/api/datasets/{repo}/commit/main$", times=2)
    other = run_factory("seed1", seed=1)
    with pytest.raises(hub_names.HubError, match="run the same push again"):
        hub.push_distilled(other, repo, token=hub_server.token, retries=1)
    assert snapshot(run) == before
    hub.push_distilled(other, repo, token=hub_server.token)
    assert_same_rows(load(repo, tmp_path, "ipc2-seed1"), datasets.load_from_disk(str(other / "dataset")))

    # 3. A server error status is transient too.
    server.fail_next("GET", rf"^/api/datasets/{repo}$", action=503)
    hub.push_distilled(other, repo, token=hub_server.token)
    assert all(f.remaining == 0 for f in server.state.faults)


def test_tiny_distill_push_load_and_reuse_captions(hub_server, tiny_cache, tmp_path):
    from vldd.configs.distill import load_config
    from vldd.jobs.distill import distill

    overrides = {"preset": "tiny", "output": str(tmp_path / "run"), "ipc": 2, "generation": {"num_inference_steps": 4},
                 "caption": {"max_new_tokens": 4}, "data": {"classes": [0, 1], "max_images_per_class": 6}}
    run = distill(load_config(overrides=overrides), cache_dir=tiny_cache).run_dir
    pushed = hub.push_distilled(run, token=hub_server.token)
    assert pushed.repo_id == "tester/sample-vldd-ipc2"
    assert_same_rows(load(pushed.repo_id, tmp_path), datasets.load_from_disk(str(run / "dataset")))
    card = hub_card(hub_server, pushed.repo_id)
    card.validate()
    assert "tiny test models" in card.text and card.data.configs and card.data.dataset_info

    # the captions, published, seed another run's caption stage instead of captioning again
    captions = hub.push_captions(run, token=hub_server.token)
    again = {**overrides, "output": str(tmp_path / "again"), "caption": {"from_hub": captions.repo_id}}
    distill(load_config(overrides=again), stages=("caption",), cache_dir=tiny_cache)
    reused = datasets.load_from_disk(str(tmp_path / "again" / "captions"))
    original = datasets.load_from_disk(str(run / "captions"))
    assert reused["caption"] == original["caption"] and reused["source_index"] == original["source_index"]


@pytest.mark.hub_live
@pytest.mark.skipif(not os.environ.get("VLDD_HUB_LIVE_TOKEN"), reason="set VLDD_HUB_LIVE_TOKEN to test the real Hub")
def test_push_to_the_real_hub(run_factory, tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    token = os.environ["VLDD_HUB_LIVE_TOKEN"]
    point_clients_at(monkeypatch, hub_names.DEFAULT_ENDPOINT, tmp_path / "hf-home")
    run = run_factory()
    api = HfApi(token=token)
    repo = f"{api.whoami()['name']}/vldd-live-test-{uuid.uuid4().hex[:8]}"
    try:
        result = hub.push_distilled(run, repo, private=True, token=token)
        assert_same_rows(load(result.repo_id, tmp_path, token=token), datasets.load_from_disk(str(run / "dataset")))
        card = DatasetCard(Path(api.hf_hub_download(repo, "README.md", repo_type="dataset",
                                                    cache_dir=str(tmp_path / "c"))).read_text())
        card.validate(repo_type="dataset")
        assert card.data.configs and card.data.dataset_info
        image = api.hf_hub_download(repo, "vldd/ipc2-seed0/preview.png", repo_type="dataset",
                                    cache_dir=str(tmp_path / "c"))
        assert Image.open(io.BytesIO(Path(image).read_bytes())).size == (48, 32)
    finally:
        api.delete_repo(repo, repo_type="dataset", missing_ok=True)
