"""`vldd reproduce` end to end on the tiny preset (mechanics only): three seeds x distill, one evaluation of the three
sets beside a random real subset, the table beside the published number, and a rerun that redoes nothing."""

import json

import pytest

from vldd.cli.commands import main
from vldd.core.runs import read_manifest
from vldd.jobs.evaluate import run as evaluation
from vldd.jobs.reproduce import CELLS, PublishedCell, reproduce, resolve_cell

# The tiny preset on 2 sample classes; students at 1/8 width on 24 px for 2 epochs.
DISTILL_FLAGS = ["--preset", "tiny", "--data.dataset", "sample", "--data.classes", "circle,stripes", "--data.max_images_per_class", "12",
                 "--generation.num_inference_steps", "4",
                 # VLCP's step 2 on, briefly: each seed fine-tunes its own tiny SD for 2 steps
                 "--finetune.enabled", "true", "--finetune.max_train_steps", "2", "--finetune.train_batch_size", "4"]
EVAL_FLAGS = ["--eval.epochs", "2", "--eval.image_size", "24", "--eval.student_width", "0.125",
              "--eval.repeats", "1", "--eval.batch_size", "8", "--eval.device", "cpu"]


@pytest.fixture(scope="module")
def reproduced(tiny_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce") / "imagenette-ipc10"
    code = main(["reproduce", "imagenette-ipc10", "--output", str(out), "--cache-dir", str(tiny_cache), "--quiet",
                 *DISTILL_FLAGS, *EVAL_FLAGS])
    return code, out


def test_published_cells_are_the_papers_numbers():
    nette = [CELLS[f"imagenette-ipc{ipc}"] for ipc in (10, 20, 50)]
    assert [(c.published, c.random_real) for c in nette] == [(64.8, 54.2), (71.4, 63.5), (81.2, 76.1)]
    assert all((c.dataset, c.protocol, c.student) == ("frgfm/imagenette", "hard", "resnetap10") for c in nette)
    assert [CELLS[f"imageidc-ipc{ipc}"].published for ipc in (10, 20, 50)] == [57.0, 63.3, 71.9]
    imagenet = [CELLS[f"imagenet1k-ipc{ipc}"] for ipc in (10, 50)]
    assert [(c.published, c.protocol, c.student, c.teacher) for c in imagenet] == [
        (46.7, "soft", "resnet18", "torchvision:resnet18"), (60.5, "soft", "resnet18", "torchvision:resnet18")]
    with pytest.raises(ValueError, match="unknown published cell 'nette-ipc10'; expected one of"):
        resolve_cell("nette-ipc10")


def test_cli_reproduces_a_cell_end_to_end_on_the_tiny_preset(reproduced, capsys):
    code, out = reproduced
    assert code == 0
    # One distilled set per seed, each its own run directory, all from the paper cell's IPC.
    for seed in (0, 1, 2):
        manifest = read_manifest(out / f"seed{seed}")
        assert manifest["config"]["seed"] == seed and manifest["config"]["ipc"] == 10
        assert manifest["config"]["preset"] == "tiny" and manifest["source"]["dataset"] == "sample"
        assert manifest["source"]["config_name"] is None  # the cell's "full_size" belongs to frgfm/imagenette
        assert manifest["finetune"]["used"] and manifest["finetune"]["model"] == f"finetune/seed{seed}"
        assert (out / f"seed{seed}" / "finetune" / f"seed{seed}" / "finetune.json").is_file()
    report = json.loads((out / "reproduce.json").read_text())
    assert report["cell"]["name"] == "imagenette-ipc10" and report["seeds"] == [0, 1, 2]
    assert report["comparable"] is False and any("preset 'tiny'" in n for n in report["notes"])
    assert report["finetuned"] == [True, True, True] and not any("fine-tuned" in n for n in report["notes"])
    assert any("recipe changed" in n for n in report["notes"])
    scores = json.loads((out / "evaluation" / "hard-resnetap10.json").read_text())
    assert [s["source"] for s in scores["sets"]] == [str(out / f"seed{s}") for s in (0, 1, 2)]
    assert scores["baselines"] == ["random"] and scores["recipe"]["epochs"] == 2
    vlcp, random_real = report["rows"]
    assert (vlcp["name"], vlcp["published"]) == ("VLCP (vldd)", 64.8)
    assert (random_real["name"], random_real["published"]) == ("random real", 54.2)
    distilled = scores["results"]["distilled"]
    assert vlcp["best_mean"] == distilled["best_mean"] and vlcp["best_std"] == distilled["best_std"]
    assert len(distilled["repeats"]) == 3  # 3 sets x 1 repeat
    assert vlcp["difference"] == pytest.approx(vlcp["best_mean"] - 64.8)
    assert random_real["best_mean"] == scores["results"]["random"]["best_mean"]
    # DD-Ranking's IOR against the random subset; no full-data baseline, so no HLR or LRS
    assert set(report["robust"]) == {"ior"}
    assert report["robust"]["ior"]["mean"] == pytest.approx(vlcp["best_mean"] - random_real["best_mean"])


def test_rerun_resumes_without_training_again(reproduced, tiny_cache, monkeypatch):
    _, out = reproduced
    before = json.loads((out / "reproduce.json").read_text())

    def no_training(*args, **kwargs):
        raise AssertionError("a finished training was run again")

    monkeypatch.setattr(evaluation, "train_repeat", no_training)
    result = reproduce("imagenette-ipc10", out, cache_dir=tiny_cache,
                       distill_overrides={"preset": "tiny", "data": {"dataset": "sample", "classes": ["circle", "stripes"],
                                                                     "max_images_per_class": 12},
                                          "generation": {"num_inference_steps": 4},
                                          "finetune": {"enabled": True, "max_train_steps": 2, "train_batch_size": 4}},
                       eval_overrides={"epochs": 2, "image_size": 24, "student_width": 0.125, "repeats": 1,
                                       "batch_size": 8, "device": "cpu"})
    assert [r.best_mean for r in result.rows] == [r["best_mean"] for r in before["rows"]]
    assert result.run_dirs == [out / "seed0", out / "seed1", out / "seed2"] and result.comparable is False


def test_cli_prints_the_table_beside_the_paper(reproduced, tiny_cache, capsys):
    _, out = reproduced
    assert main(["reproduce", "imagenette-ipc10", "--output", str(out), "--cache-dir", str(tiny_cache), "--quiet",
                 *DISTILL_FLAGS, *EVAL_FLAGS]) == 0  # resumes: nothing is computed again
    printed = capsys.readouterr().out
    assert ("imagenette-ipc10: hard-label protocol, resnetap10, 2 epochs, 3 sets (seeds 0, 1, 2) x 1 trainings per set "
            "— top-1 %, mean ± std over the 3 trainings") in printed
    assert "VLCP (vldd)    64.8" in printed and "random real    54.2" in printed
    assert "  VLCP (vldd)  IOR " in printed and "HLR" not in printed
    assert "NOT comparable with the paper" in printed and f"report: {out / 'reproduce.json'}" in printed


def test_bad_requests_are_clear_errors(tmp_path, capsys):
    with pytest.raises(ValueError, match="`ipc` is set by the reproduction"):
        reproduce("imagenette-ipc10", tmp_path, distill_overrides={"ipc": 2})
    with pytest.raises(ValueError, match=r"\['protocol'\] are set by the reproduction"):
        reproduce("imagenette-ipc10", tmp_path, eval_overrides={"protocol": "soft"})
    with pytest.raises(ValueError, match="cell 'imageidc-ipc10' has no public source dataset: give `data.dataset`"):
        reproduce("imageidc-ipc10", tmp_path)
    cell = PublishedCell("mine", "sample", None, 2, "hard", "resnetap10", 50.0, None)
    with pytest.raises(ValueError, match=r"`seeds` must be distinct and at least one, got \[0, 0\]"):
        reproduce(cell, tmp_path, seeds=(0, 0))
    assert main(["reproduce", "imagenette-ipc10", "--output", str(tmp_path), "--seed", "3"]) == 2
    assert "`seed` is set by the reproduction" in capsys.readouterr().err


def test_comparability_follows_the_official_test_sets():
    from vldd.jobs.reproduce import NETTE_VAL, comparability

    nette, imagenet = CELLS["imagenette-ipc10"], CELLS["imagenet1k-ipc10"]
    finished = [True, True, True]
    # the official hard-label script tests on ImageNette's own val split: the Hub's validation split is that set
    ok, notes = comparability(nette, "paper", [], finished,
                              {"dataset": "frgfm/imagenette", "val_split": "validation", "num_test_images": NETTE_VAL})
    assert ok and notes == []
    ok, notes = comparability(nette, "paper", [], finished,
                              {"dataset": "frgfm/imagenette", "val_split": "validation", "num_test_images": 500})
    assert not ok and notes == ["tested on 500 images of 'frgfm/imagenette' ('validation'); the official harness "
                                "tests on ImageNette's val split (3925 images)"]
    # RDED tests on the 50 ImageNet val images of each class
    real = {"dataset": "ILSVRC/imagenet-1k", "val_split": "validation", "num_test_images": 50_000}
    assert comparability(imagenet, "paper", [], finished, real) == (True, [])
    ok, notes = comparability(imagenet, "paper", ["epochs"], finished, real)
    assert not ok and notes == ["recipe changed (epochs): not comparable with the paper"]
    ok, notes = comparability(imagenet, "tiny", [], [True, False, None], real)
    assert not ok and notes == ["preset 'tiny': mechanics only, not comparable with the paper",
                                "some seeds generated without a fine-tuned model (D4M-style): not the paper's method"]
