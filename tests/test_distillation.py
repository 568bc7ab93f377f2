"""The orchestrator end to end on the tiny preset: output, resume after SIGKILL, invalidation, bad input."""

import json
import os
import signal
import subprocess
import sys

import datasets
import numpy as np
import pytest
import yaml
from helpers import image_folder, tiny_overrides, wait_for
from PIL import Image

from vldd.cli.commands import main
from vldd.configs.distill import load_config
from vldd.jobs.distill import distill


def _images(dataset):
    return [np.asarray(im) for im in dataset["image"]]


@pytest.fixture(scope="module")
def reference_run(tiny_cache, tmp_path_factory):
    """One uninterrupted small tiny run; others are compared with it."""
    out = tmp_path_factory.mktemp("reference")
    result = distill(load_config(overrides=tiny_overrides(out)), cache_dir=tiny_cache)
    return out, result


def test_cli_distill_end_to_end_on_the_sample_dataset(tiny_cache, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["distill", "--preset", "tiny", "--output", str(out), "--cache-dir", str(tiny_cache), "--quiet",
                 "--ipc", "2", "--generation.num_inference_steps", "10"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "tiny preset" in printed and "noise" in printed  # says plainly that the tiny output is not real
    dataset = datasets.load_from_disk(str(out / "dataset"))
    assert dataset.num_rows == 2 * 5
    assert dataset.features["label"].names == ["circle", "square", "triangle", "cross", "stripes"]
    assert sorted(dataset["label"]) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert {"image", "label", "class_name", "prompt", "cluster", "cluster_size", "seed", "source_dataset"} <= set(
        dataset.features)
    assert dataset[0]["image"].size == (64, 64)
    assert all(p for p in dataset["prompt"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["tiny"] is True and "noise" in manifest["note"]
    assert manifest["config"]["ipc"] == 2 and manifest["models"]["diffusion"]["id"] == "tiny://stable-diffusion"
    assert set(manifest["timings"]) >= {"caption", "prototypes", "text", "generate"}
    assert manifest["counts"]["images_per_class"]["circle"] == 30
    assert sum(manifest["counts"]["cluster_sizes"]["circle"]) == 30 - manifest["counts"]["outliers_per_class"]["circle"]
    assert {"torch", "diffusers", "transformers", "datasets"} <= set(manifest["versions"])
    assert yaml.safe_load((out / "config.yaml").read_text())["ipc"] == 2
    preview = Image.open(out / "preview.png")
    assert preview.size[1] == 5 * preview.size[0] // 2  # 5 rows (classes) of 2 images
    captions = datasets.load_from_disk(str(out / "captions"))
    assert captions.num_rows == 150 and set(captions.column_names) >= {"source_index", "label", "caption"}


def test_rerun_skips_finished_work_and_reproduces(reference_run, tiny_cache):
    out, first = reference_run
    stamps = {p: p.stat().st_mtime_ns for p in (out / "work").rglob("*") if p.is_file()}
    again = distill(load_config(overrides=tiny_overrides(out)), cache_dir=tiny_cache)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing recomputed
    assert all(np.array_equal(a, b) for a, b in zip(_images(first.dataset), _images(again.dataset)))


def test_other_seed_gives_other_images(reference_run, tiny_cache, tmp_path):
    _, first = reference_run
    other = distill(load_config(overrides=tiny_overrides(tmp_path, seed=1)), cache_dir=tiny_cache)
    assert not any(np.array_equal(a, b) for a, b in zip(_images(first.dataset), _images(other.dataset)))


def test_changed_setting_recomputes_only_what_depends_on_it(reference_run, tiny_cache, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(reference_run[0], out)
    work = out / "work"
    stamp = {stage: {p: p.stat().st_mtime_ns for p in (work / stage).rglob("0*")}
             for stage in ("caption", "prototypes", "text", "generate")}
    result = distill(load_config(overrides=tiny_overrides(out, generation={"guidance_scale": 3.0})),
                     cache_dir=tiny_cache)
    for stage in ("caption", "prototypes", "text"):
        assert {p: p.stat().st_mtime_ns for p in stamp[stage]} == stamp[stage], stage
    assert not any(np.array_equal(a, b) for a, b in zip(_images(reference_run[1].dataset), _images(result.dataset)))
    # a text-prototype setting redoes text prototypes and generation, not captions or image prototypes
    before = {stage: {p: p.stat().st_mtime_ns for p in (work / stage).glob("0*")} for stage in ("text", "generate")}
    distill(load_config(overrides=tiny_overrides(out, generation={"guidance_scale": 3.0}, text={"top_k": 2})),
            cache_dir=tiny_cache)
    for stage in ("caption", "prototypes"):
        assert {p: p.stat().st_mtime_ns for p in stamp[stage]} == stamp[stage], stage
    for stage in ("text", "generate"):  # every class rewritten
        assert before[stage] and all(p.stat().st_mtime_ns != t for p, t in before[stage].items()), stage


@pytest.mark.slow  # a subprocess run of the CLI
def test_sigkill_and_resume_gives_the_same_dataset(reference_run, tiny_cache, tmp_path):
    out = tmp_path / "killed"
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(tiny_overrides(out)))
    command = [sys.executable, "-m", "vldd.cli.commands", "distill", "--config", str(config), "--cache-dir", str(tiny_cache),
               "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for stage_file in ("work/caption/000000.json", "work/generate/000000"):  # kill mid-captions, then mid-generation
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        reached = wait_for(lambda pattern=stage_file: any(out.glob(pattern)), process)
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert reached, f"the run ended before {stage_file} appeared"
        assert not (out / "dataset").exists()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    resumed = datasets.load_from_disk(str(out / "dataset"))
    reference = reference_run[1].dataset
    assert resumed["prompt"] == reference["prompt"] and resumed["label"] == reference["label"]
    assert all(np.array_equal(a, b) for a, b in zip(_images(resumed), _images(reference)))


def test_too_few_images_is_an_error_or_fewer_clusters(tiny_cache, tmp_path):
    overrides = tiny_overrides(tmp_path, ipc=10, data={"max_images_per_class": 8})
    with pytest.raises(ValueError, match="IPC 10 needs at least 10 inlier images per class; too few in: 'circle'"):
        distill(load_config(overrides=overrides), cache_dir=tiny_cache)
    overrides["data"]["too_few_images"] = "reduce"
    overrides["data"]["classes"] = ["circle"]
    result = distill(load_config(overrides=overrides), cache_dir=tiny_cache)
    assert result.dataset.num_rows == 8 - 1  # LOF drops ceil(0.1 x 7) = 1 of 8: 7 clusters


def test_corrupt_image_in_a_folder_is_skipped_and_counted(tiny_cache, tmp_path):
    image_folder(tmp_path / "folder", ["apple", "pear"])
    (tmp_path / "folder" / "pear" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    overrides = tiny_overrides(tmp_path / "run", ipc=2, data={"dataset": str(tmp_path / "folder"), "classes": None,
                                                              "max_images_per_class": None})
    result = distill(load_config(overrides=overrides), cache_dir=tiny_cache)
    assert result.dataset.num_rows == 4
    assert result.manifest["counts"]["skipped_per_class"] == {"apple": 0, "pear": 1}
    assert result.dataset.features["label"].names == ["apple", "pear"]
    assert set(result.dataset["source_dataset"]) == {"folder"}  # not the local path


def test_cli_reports_bad_input_without_a_traceback(capsys, tmp_path):
    assert main(["distill", "--ipc", "0", "--output", str(tmp_path)]) == 2
    assert "`ipc` must be an integer >= 1, got 0" in capsys.readouterr().err
    assert main(["distill", "--preset", "tiny", "--dataset", "no-such-user/nothing", "--output", str(tmp_path)]) == 2
    assert "could not load dataset 'no-such-user/nothing'" in capsys.readouterr().err


def test_single_stage_commands_need_their_inputs(tiny_cache, tmp_path):
    overrides = tiny_overrides(tmp_path)
    with pytest.raises(ValueError, match="captions are missing for classes \\['circle', 'stripes'\\]; run `vldd caption`"):
        distill(load_config(overrides=overrides), stages=("text",), cache_dir=tiny_cache)


@pytest.mark.slow  # a subprocess run of the CLI
def test_two_processes_under_accelerate_give_the_single_process_dataset(reference_run, tiny_cache, tmp_path):
    out = tmp_path / "sharded"
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(tiny_overrides(out)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # accelerate's --cpu runs one process unless mpirun is installed; torchrun's processes (--multi_gpu) fall back to
    # gloo on a machine without CUDA, which is how CPU-only multi-process runs work.
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "vldd.cli.commands",
               "distill", "--config", str(config), "--cache-dir", str(tiny_cache), "--quiet", "--device", "cpu"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    sharded = datasets.load_from_disk(str(out / "dataset"))
    reference = reference_run[1].dataset
    assert json.loads((out / "manifest.json").read_text())["processes"] == 2
    assert sharded["prompt"] == reference["prompt"] and sharded["label"] == reference["label"]
    assert all(np.array_equal(a, b) for a, b in zip(_images(sharded), _images(reference)))

