"""Evaluation protocols: the rules and augmentations as units, then short CPU trainings on the embedded sample set.

Students here are ResNetAP-10 at 1/8 of the published width on 24 px inputs, trained for a few epochs with a batch
size override, so that the recipes (optimizers, schedules, CutMix, augmentations, soft labels) run for real in
seconds.
"""

import json
import logging
import math

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from vldd.augment import ShufflePatches, cutmix, eval_transform
from vldd.cli import main
from vldd.evaluation import (
    EvalConfig,
    LabelledImages,
    RepeatResult,
    RunResult,
    align_classes,
    build_optimizer,
    evaluate,
    half_cosine_lr,
    hard_epochs,
    multistep_lr,
    open_validation,
    random_subset,
    record_evaluation,
    resolve_recipe,
    soft_batch_size,
)
from vldd.runs import read_manifest
from vldd.sample import SAMPLE_CLASSES, load_sample
from vldd.students import build_student, save_classifier

SIZE, WIDTH = 24, 0.125
CLASSES = ["stripes", "cross", "circle", "triangle"]  # the distilled set covers 4 of the 5 sample classes
CHANCE = 100 / len(CLASSES)
TINY = {"student_width": WIDTH, "image_size": SIZE, "repeats": 1}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # The test machines' CPUs are shared: one intra-op thread avoids oversubscription (several times faster here).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def make_run(root, ipc=3):
    """A run directory like the pipeline writes: dataset/ (every source class name, in another order than the real
    set's, with only CLASSES present) and manifest.json naming the source dataset."""
    train = load_sample("train")
    names = list(reversed(SAMPLE_CLASSES))
    labels = np.asarray(train["label"])
    images, ids = [], []
    for name in CLASSES:
        for row in np.flatnonzero(labels == SAMPLE_CLASSES.index(name))[-ipc:]:
            images.append(train[int(row)]["image"])
            ids.append(names.index(name))
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names),
                                  "prompt": datasets.Value("string")})
    dataset = datasets.Dataset.from_dict({"image": images, "label": ids, "prompt": ["a prompt"] * len(ids)},
                                         features=features)
    dataset.save_to_disk(str(root / "dataset"))
    (root / "manifest.json").write_text(json.dumps({"source": {"dataset": "sample", "split": "train"}}))
    return root


@pytest.fixture(scope="module")
def hard_run(tmp_path_factory):
    """One hard-label evaluation with both baselines: 12 epochs, batch 16 (the recipe's 64 would be 2 steps/epoch)."""
    run = make_run(tmp_path_factory.mktemp("run"))
    config = EvalConfig(distilled=str(run), real="sample", protocol="hard", epochs=12, batch_size=16,
                        baselines=["random", "full"], **TINY)
    return run, evaluate(config)


# ---------------------------------------------------------------------------------------------------------------
# Rules and augmentations


def test_hard_epoch_rule():
    assert [hard_epochs(ipc, 10) for ipc in (1, 10, 11, 50, 51, 200)] == [2000, 2000, 1500, 1500, 1000, 1000]
    assert [hard_epochs(ipc, 100) for ipc in (10, 50, 100)] == [1333, 1000, 666]


def test_soft_batch_size_rule():
    assert soft_batch_size(10, 10) == 50 and soft_batch_size(50, 10) == 100
    assert soft_batch_size(10, 1000) == 100 and soft_batch_size(50, 100) == 200
    assert soft_batch_size(1, 10) == 10 and soft_batch_size(3, 4) == 12  # capped at IPC x classes


def _lrs(config, epochs_to_check):
    recipe = resolve_recipe(config, ipc=10, num_classes=10)
    optimizer, scheduler = build_optimizer(torch.nn.Linear(2, 2), recipe)
    seen = {}
    for epoch in range(recipe.epochs):
        seen[epoch] = [group["lr"] for group in optimizer.param_groups]
        optimizer.step()
        scheduler.step()
    return recipe, {e: seen[e] for e in epochs_to_check}


def test_multistep_schedule_matches_formula():
    recipe, seen = _lrs(EvalConfig(distilled="sample", epochs=300), [0, 199, 200, 249, 250, 299])
    assert recipe.milestones == (200, 250)
    expected = {0: 0.01, 199: 0.01, 200: 0.002, 249: 0.002, 250: 0.0004, 299: 0.0004}
    for epoch, lrs in seen.items():
        assert lrs == pytest.approx([expected[epoch]])
        assert multistep_lr(epoch, 300) == pytest.approx(expected[epoch])


def test_half_cosine_schedule_matches_formula():
    config = EvalConfig(distilled="sample", protocol="soft", teacher="t.pt", epochs=300)
    recipe, seen = _lrs(config, [0, 100, 150, 299])
    for epoch, lrs in seen.items():
        expected = 1e-3 * 0.5 * (1 + math.cos(math.pi * epoch / 600))
        assert lrs == pytest.approx([expected, expected])
        assert half_cosine_lr(epoch, 300) == pytest.approx(expected)
    assert half_cosine_lr(300, 300) == pytest.approx(5e-4)  # decays only to half
    optimizer, _ = build_optimizer(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.GroupNorm(4, 4)), recipe)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.01, 0.0]
    assert [sum(p.numel() for p in g["params"]) for g in optimizer.param_groups] == [108, 12]  # no decay: biases, norm


def test_recipes_resolve_protocol_rules():
    hard = resolve_recipe(EvalConfig(distilled="sample"), ipc=10, num_classes=10)
    assert (hard.epochs, hard.batch_size, hard.lr, hard.momentum, hard.weight_decay) == (2000, 64, 0.01, 0.9, 5e-4)
    assert hard.eval_epochs == tuple(range(20, 2001, 20)) and hard.student == "resnetap10"
    soft = resolve_recipe(EvalConfig(distilled="sample", protocol="soft", teacher="t.pt"), ipc=50, num_classes=100)
    assert (soft.epochs, soft.batch_size, soft.temperature, soft.shuffle_factor) == (300, 200, 20.0, 2)
    assert soft.eval_epochs == (250, 260, 270, 280, 290, 300) and soft.student == "resnet18"
    long = resolve_recipe(EvalConfig(distilled="sample", protocol="soft", teacher="t.pt", epochs=500, image_size=32),
                          ipc=10, num_classes=10)
    assert long.eval_epochs[0] == 410 and long.shuffle_factor == 1  # CIFAR-sized inputs: factor 1


def test_cutmix_mixes_labels_by_area():
    images = torch.arange(8, dtype=torch.float32).view(8, 1, 1, 1).expand(8, 3, 32, 32).contiguous()
    rng = np.random.default_rng(0)
    for _ in range(20):
        mixed, perm, lam = cutmix(images, rng)
        for i in range(8):
            own = (mixed[i] == i).float().mean().item()
            if perm[i] != i:
                assert own == pytest.approx(lam)  # lam is exactly the area kept from the image itself
                assert (mixed[i] == perm[i]).float().mean().item() == pytest.approx(1 - lam)
    assert images[3].eq(3).all()  # the input batch is left untouched


def test_shuffle_patches_permutes_patches():
    torch.manual_seed(0)
    image = torch.arange(3 * 8 * 8, dtype=torch.float32).view(3, 8, 8)

    def patches(x):
        return sorted(tuple(x[:, r:r + 4, c:c + 4].flatten().tolist()) for r in (0, 4) for c in (0, 4))

    outputs = [ShufflePatches(2)(image) for _ in range(16)]
    assert all(patches(out) == patches(image) for out in outputs)
    assert any(not torch.equal(out, image) for out in outputs)
    assert torch.equal(ShufflePatches(1)(image), image)


def test_config_validation_messages():
    with pytest.raises(ValueError, match="`epochs` must be >= 1 or None, got 0"):
        EvalConfig(distilled="sample", epochs=0)
    with pytest.raises(ValueError, match="`protocol` must be one of"):
        EvalConfig(distilled="sample", protocol="mixed")
    with pytest.raises(ValueError, match="the soft protocol needs a `teacher`"):
        EvalConfig(distilled="sample", protocol="soft")
    with pytest.raises(ValueError, match="`baselines` must hold some of"):
        EvalConfig(distilled="sample", baselines=["subset"])
    with pytest.raises(ValueError, match="`image_size` must be >= 64 pixels for convnet6"):
        EvalConfig(distilled="sample", student="ConvNet-6", image_size=32)
    assert EvalConfig(distilled="sample", student="ResNet-18", baselines="full,random").baselines == ["full", "random"]


def test_align_classes_by_name_and_mismatch():
    classes, target_of, real_ids = align_classes(["b", "x", "a"], np.array([2, 0, 2]), ["a", "b", "c"])
    assert (classes, target_of, real_ids) == (["b", "a"], {0: 0, 2: 1}, [1, 0])
    with pytest.raises(ValueError, match=r"not label names of the real dataset: \['x'\]"):
        align_classes(["b", "x", "a"], np.array([1, 0]), ["a", "b", "c"])


def test_random_subset_is_seeded_and_per_class():
    pool = LabelledImages(None, list(range(100, 130)), [i % 3 for i in range(30)])
    first, again = random_subset(pool, [2, 1, 3], seed=[0, 1]), random_subset(pool, [2, 1, 3], seed=[0, 1])
    assert first.rows == again.rows and np.bincount(first.targets).tolist() == [2, 1, 3]
    assert random_subset(pool, [2, 1, 3], seed=[1, 1]).rows != first.rows
    with pytest.raises(ValueError, match="needs 11 real images"):
        random_subset(pool, [11, 1, 1], seed=0)


def test_validation_split_falls_back_to_test(tmp_path, caplog):
    folder = tmp_path / "real"
    datasets.DatasetDict({"train": load_sample("train"), "test": load_sample("validation")}).save_to_disk(str(folder))
    with caplog.at_level(logging.WARNING, logger="vldd.evaluation"):
        dataset, split = open_validation(str(folder))
    assert split == "test" and len(dataset) == 50
    assert "no 'validation' split; testing on its 'test' split" in caplog.text
    with pytest.raises(ValueError, match=r"tried \['val2'\]"):
        open_validation(str(folder), "val2")


def test_class_mismatch_is_a_clear_error(tmp_path):
    run = make_run(tmp_path)
    real = tmp_path / "real"
    renamed = load_sample("validation").cast_column("label", datasets.ClassLabel(names=list("ABCDE")))
    datasets.DatasetDict({"validation": renamed}).save_to_disk(str(real))
    with pytest.raises(ValueError, match="not label names of the real dataset"):
        evaluate(EvalConfig(distilled=str(run), real=str(real), epochs=1, **TINY))


def test_record_evaluation_replaces_same_protocol_and_student(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"source": {"dataset": "sample"}}))
    record_evaluation(tmp_path, {"protocol": "hard", "student": "resnetap10", "best_mean": 1.0})
    record_evaluation(tmp_path, {"protocol": "soft", "student": "resnet18", "best_mean": 2.0})
    entries = record_evaluation(tmp_path, {"protocol": "hard", "student": "resnetap10", "best_mean": 3.0})
    assert [(e["protocol"], e["best_mean"]) for e in entries] == [("soft", 2.0), ("hard", 3.0)]
    assert read_manifest(tmp_path)["source"] == {"dataset": "sample"}


def test_run_stats_over_repeats():
    run = RunResult("distilled", [RepeatResult(0, [1, 2], [40.0, 30.0], 12, 1.0),
                                  RepeatResult(1, [1, 2], [50.0, 60.0], 12, 1.0)])
    assert run.stats() == {"best_mean": 50.0, "best_std": 10.0, "final_mean": 45.0, "final_std": 15.0}
    assert run.repeats[0].best_epoch == 1 and run.repeats[1].best_epoch == 2


# ---------------------------------------------------------------------------------------------------------------
# Training on the sample dataset


def test_full_real_train_beats_chance_and_random_baseline_shares_the_recipe(hard_run):
    _, result = hard_run
    full, random, distilled = result.runs["full"], result.runs["random"], result.runs["distilled"]
    logging.getLogger(__name__).info("\n".join(result.summary_lines()))
    assert full.repeats[0].train_images == 30 * len(CLASSES)
    assert full.stats()["best_mean"] >= CHANCE + 35  # 4 classes: chance is 25 %
    assert full.stats()["final_mean"] >= CHANCE + 25
    assert random.repeats[0].train_images == distilled.repeats[0].train_images == 3 * len(CLASSES)
    assert len(random.repeats[0].subset_rows) == 12
    assert random.repeats[0].epochs == distilled.repeats[0].epochs == full.repeats[0].epochs == list(range(1, 13))
    report = result.report
    assert set(report["results"]) == {"distilled", "random", "full"}
    assert report["recipe"]["epochs"] == 12 and report["recipe"]["batch_size"] == 16


def test_results_json_plot_and_manifest(hard_run):
    run, result = hard_run
    assert result.results_path == run / "evaluation" / "hard-resnetap10.json"
    report = json.loads(result.results_path.read_text())
    assert set(report) >= {"format", "created", "protocol", "student", "accuracy_unit", "distilled", "real",
                           "classes", "teacher", "recipe", "config", "results", "baselines", "device", "amp",
                           "seconds", "versions", "plot"}
    assert report["protocol"] == "hard" and report["classes"] == ["stripes", "cross", "triangle", "circle"] and report["teacher"] is None
    assert report["distilled"]["ipc"] == 3 and report["distilled"]["source_dataset"] == "sample"
    assert report["real"] == {"dataset": "sample", "val_split": "validation", "val_per_class": None,
                              "num_test_images": 40, "train_split": "train"}
    assert set(report["recipe"]) >= {"optimizer", "lr", "momentum", "weight_decay", "schedule", "milestones", "gamma",
                                     "loss", "cutmix_beta", "augmentations", "test_transform", "eval_epochs"}
    assert report["config"]["student_width"] == WIDTH
    for run_report in report["results"].values():
        assert set(run_report) == {"train_images", "best_mean", "best_std", "final_mean", "final_std", "repeats"}
        repeat = run_report["repeats"][0]
        assert set(repeat) >= {"seed", "best", "best_epoch", "final", "epochs", "top1", "seconds", "train_images"}
        assert len(repeat["epochs"]) == len(repeat["top1"]) == 12 and repeat["best"] == max(repeat["top1"])
    with Image.open(result.plot_path) as plot:
        assert plot.format == "PNG" and plot.width > 300
    (entry,) = read_manifest(run)["evaluation"]
    assert (entry["protocol"], entry["student"], entry["results_file"]) == ("hard", "resnetap10",
                                                                             "evaluation/hard-resnetap10.json")
    assert entry["best_mean"] == report["results"]["distilled"]["best_mean"]
    assert set(entry["baselines"]) == {"random", "full"}


def _train_teacher(path):
    """A small ResNetAP-10 teacher trained on all 5 sample classes (plain Adam, flips only): ~98 % val accuracy."""
    transform = eval_transform(SIZE)
    train = load_sample("train")
    x = torch.stack([transform(image) for image in train["image"]])
    y = torch.tensor(train["label"])
    torch.manual_seed(0)
    model = build_student("resnetap10", len(SAMPLE_CLASSES), SIZE, WIDTH)
    optimizer = torch.optim.Adam(model.parameters(), 3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(40):
        index = torch.randint(len(x), (32,), generator=generator)
        flip = torch.rand(32, generator=generator) < 0.5
        batch = torch.where(flip[:, None, None, None], x[index].flip(-1), x[index])
        loss = torch.nn.functional.cross_entropy(model(batch), y[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return save_classifier(model.eval(), path, arch="resnetap10", class_names=SAMPLE_CLASSES, image_size=SIZE,
                           width=WIDTH)


def test_soft_protocol_with_a_trained_teacher_beats_chance(tmp_path):
    run = make_run(tmp_path / "run")
    teacher = _train_teacher(tmp_path / "teacher.pt")
    config = EvalConfig(distilled=str(run), protocol="soft", teacher=str(teacher), student="resnetap10", epochs=40,
                        batch_size=4, **TINY)
    result = evaluate(config)
    logging.getLogger(__name__).info("\n".join(result.summary_lines()))
    repeat = result.runs["distilled"].repeats[0]
    assert repeat.epochs == [40]  # tested every 10 epochs in the last 20 %
    assert repeat.best >= CHANCE + 20
    report = result.report
    assert report["teacher"]["class_names"] == SAMPLE_CLASSES and report["recipe"]["temperature"] == 20.0
    assert report["recipe"]["optimizer"] == "AdamW" and report["recipe"]["shuffle_factor"] == 1
    assert [(e["protocol"], e["teacher"]) for e in read_manifest(run)["evaluation"]] == [("soft", str(teacher))]


def test_same_seed_same_curves(tmp_path):
    run = make_run(tmp_path)
    config = dict(distilled=str(run), epochs=3, batch_size=4, eval_interval=1, record=False, **TINY)
    first = evaluate(EvalConfig(output=str(tmp_path / "a.json"), **config))
    second = evaluate(EvalConfig(output=str(tmp_path / "b.json"), **config))
    other = evaluate(EvalConfig(output=str(tmp_path / "c.json"), seed=1, **config))
    curve = first.runs["distilled"].repeats[0].top1
    assert curve == second.runs["distilled"].repeats[0].top1
    assert other.runs["distilled"].repeats[0].top1 != curve  # another seed: another initialisation and data order
    assert "evaluation" not in read_manifest(run)


def test_cli_evaluate(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    output = tmp_path / "out" / "scores.json"
    code = main(["evaluate", "--distilled", str(run), "--real", "sample", "--protocol", "hard", "--student",
                 "ResNetAP-10", "--student-width", str(WIDTH), "--image-size", str(SIZE), "--epochs", "2",
                 "--repeats", "2", "--val-per-class", "5", "--baseline", "random", "--output", str(output),
                 "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "hard-label protocol, resnetap10, 2 epochs, 4 classes, IPC 3" in printed and "random" in printed
    report = json.loads(output.read_text())
    assert report["real"]["num_test_images"] == 20 and len(report["results"]["distilled"]["repeats"]) == 2
    assert [r["seed"] for r in report["results"]["random"]["repeats"]] == [0, 1]
    assert output.with_suffix(".png").is_file()
    assert read_manifest(run)["evaluation"][0]["results_file"] == str(output)
    assert main(["evaluate", "--distilled", str(run), "--epochs", "0"]) == 2
    assert "`epochs` must be >= 1" in capsys.readouterr().err


def test_two_processes_under_accelerate_give_the_single_process_results(tmp_path):
    """Jobs (training set, repeat) are dealt out across processes; every number equals the one-process run's."""
    import os
    import subprocess
    import sys

    run = make_run(tmp_path / "run")
    flags = ["--distilled", str(run), "--real", "sample", "--protocol", "hard", "--epochs", "2", "--batch-size", "16",
             "--student-width", str(WIDTH), "--image-size", str(SIZE), "--repeats", "2", "--baseline", "random",
             "--device", "cpu", "--no-record", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = tmp_path / "single.json"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "vldd.cli"]
    for command, output in (([sys.executable, "-m", "vldd.cli"], single), (launch, tmp_path / "sharded.json")):
        done = subprocess.run([*command, "evaluate", *flags, "--output", str(output)], env=env, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    one, two = (json.loads(p.read_text()) for p in (single, tmp_path / "sharded.json"))
    assert two["processes"] == 2 and one["processes"] == 1
    for name in ("distilled", "random"):
        curves = [[r["top1"] for r in report["results"][name]["repeats"]] for report in (one, two)]
        assert curves[0] == curves[1]
    assert not list(tmp_path.glob(".sharded.parts"))  # the per-job files are cleaned up
