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

from vldd.cli.commands import main
from vldd.configs.profiles import PROFILES
from vldd.core.runs import read_manifest
from vldd.data.augment import IDCColorJitter, ShufflePatches, cutmix, eval_transform, hard_train_transform
from vldd.data.sample import SAMPLE_CLASSES, load_sample
from vldd.jobs.evaluate import EvalConfig, evaluate
from vldd.jobs.evaluate import run as evaluation
from vldd.jobs.evaluate.data import LabelledImages, align_classes, open_validation, random_subset
from vldd.jobs.evaluate.recipes import (
    build_optimizer,
    half_cosine_lr,
    hard_epochs,
    multistep_lr,
    resolve_recipe,
    soft_batch_size,
)
from vldd.jobs.evaluate.results import RepeatResult, RunResult, record_evaluation
from vldd.jobs.evaluate.train import amp_dtype
from vldd.jobs.reports import evaluation_lines
from vldd.models.students import build_student, save_classifier

SIZE, WIDTH = 24, 0.125
CLASSES = ["stripes", "cross", "circle", "triangle"]  # the distilled set covers 4 of the 5 sample classes
CHANCE = 100 / len(CLASSES)
TINY = {"student_width": WIDTH, "image_size": SIZE, "repeats": 1}


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
    # Minimax's ipc_epoch: IPC 1 -> 3000, <= 10 -> 2000, <= 50 -> 1500, <= 200 -> 1000, <= 500 -> 500, else 300.
    ipcs = (1, 2, 10, 11, 50, 51, 200, 201, 500, 501)
    assert [hard_epochs(ipc, 10) for ipc in ipcs] == [3000, 2000, 2000, 1500, 1500, 1000, 1000, 500, 500, 300]
    # Exactly 100 classes: x2/3, floored to hundreds (3000 -> 2000, 2000 -> 1333 -> 1300, 1500 -> 1000, 1000 -> 600).
    assert [hard_epochs(ipc, 100) for ipc in (1, 10, 20, 50, 100)] == [2000, 1300, 1000, 1000, 600]
    assert hard_epochs(10, 200) == hard_epochs(10, 1000) == 2000  # only exactly 100 classes are shortened


def test_soft_batch_size_rule():
    assert soft_batch_size(10, 10) == 50 and soft_batch_size(50, 10) == 100
    assert soft_batch_size(10, 1000) == 100 and soft_batch_size(50, 100) == 200
    assert soft_batch_size(1, 10) == 10 and soft_batch_size(1, 100) == 20 and soft_batch_size(1, 1000) == 20
    assert soft_batch_size(3, 4) == 12  # capped at IPC x classes
    assert [soft_batch_size(ipc, 200, "tiny-imagenet") for ipc in (1, 10, 50)] == [100, 100, 100]


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
    assert (hard.image_size, hard.student_norm, hard.amp) == (224, "instance", False)
    assert hard.test_transform.startswith("Resize(224), CenterCrop(224)")  # Minimax's, not Resize(256)
    assert resolve_recipe(EvalConfig(distilled="sample", student="resnet18"), 10, 10).student_norm == "instance"
    soft = resolve_recipe(EvalConfig(distilled="sample", protocol="soft", teacher="t.pt"), ipc=50, num_classes=100)
    assert (soft.epochs, soft.batch_size, soft.temperature, soft.shuffle_factor) == (500, 200, 20.0, 2)
    assert soft.eval_epochs == (410, 420, 430, 440, 450, 460, 470, 480, 490, 500) and soft.student == "resnet18"
    assert soft.student_norm == "batch" and soft.test_transform.startswith("Resize(256), CenterCrop(224)")


@pytest.mark.parametrize(("real", "num_classes", "ipc", "size", "factor", "batch"), [
    ("frgfm/imagenette", 10, 10, 224, 2, 50),
    ("uoft-cs/cifar10", 10, 10, 32, 1, 50),
    ("uoft-cs/cifar100", 100, 1, 32, 1, 20),
    ("zh-plus/tiny-imagenet", 200, 50, 64, 2, 100),
    ("ILSVRC/imagenet-1k", 1000, 10, 224, 2, 100),
    ("/data/my-folder", 1000, 50, 224, 2, 200),  # 1000 classes: ImageNet-1K by its size
])
def test_image_size_shuffle_factor_and_batch_follow_the_dataset(real, num_classes, ipc, size, factor, batch):
    soft = resolve_recipe(EvalConfig(distilled="x", protocol="soft", teacher="t.pt"), ipc, num_classes, real)
    assert (soft.image_size, soft.shuffle_factor, soft.batch_size) == (size, factor, batch)
    assert soft.test_transform.startswith(f"Resize({size // 7 * 8}), CenterCrop({size})")
    hard = resolve_recipe(EvalConfig(distilled="x"), ipc, num_classes, real)
    assert hard.image_size == size and hard.test_transform.startswith(f"Resize({size}), CenterCrop({size})")
    explicit = resolve_recipe(EvalConfig(distilled="x", image_size=96, protocol="soft", teacher="t.pt",
                                         shuffle_factor=3), ipc, num_classes, real)
    assert (explicit.image_size, explicit.shuffle_factor) == (96, 3)  # explicit values win


def test_fp32_by_default_autocast_on_request():
    config = EvalConfig(distilled="sample")
    assert config.amp is False
    assert amp_dtype(config, torch.device("cuda")) is None  # no autocast even on a GPU
    assert amp_dtype(EvalConfig(distilled="sample", amp=True), torch.device("cpu")) is None
    assert resolve_recipe(EvalConfig(distilled="sample", amp=True), 10, 10).amp is True


def _columns_image(width, height):
    """An RGB image whose red value is its column index (mod 256) and green value its row index."""
    x = np.arange(width) % 256
    y = np.arange(height) % 256
    pixels = np.stack([np.broadcast_to(x, (height, width)), np.broadcast_to(y[:, None], (height, width)),
                       np.zeros((height, width))], axis=-1).astype(np.uint8)
    return Image.fromarray(pixels)


def test_hard_test_transform_is_resize_then_centre_crop_of_the_same_size():
    # 448 x 224: Resize(224) keeps it, CenterCrop(224) keeps columns 112..335 (Resize(256) would rescale first).
    out = eval_transform(224, resize=224)(_columns_image(448, 224))
    assert out.shape == (3, 224, 224)
    red = out[0] * 0.229 + 0.485  # undo the normalisation
    assert red[0, 0].item() == pytest.approx(112 / 255, abs=1e-5)
    assert red[0, -1].item() == pytest.approx((335 - 256) / 255, abs=1e-5)  # values wrap at 256
    rded = eval_transform(224)(_columns_image(448, 224))  # RDED's Resize(256): the crop starts elsewhere
    assert rded.shape == (3, 224, 224) and not torch.allclose(rded, out)


def test_hard_train_transform_resizes_and_crops_before_augmenting():
    steps = hard_train_transform(32).transforms
    assert [type(t).__name__ for t in steps] == ["Resize", "CenterCrop", "ToTensor", "RandomResizedCrop",
                                                 "RandomHorizontalFlip", "IDCColorJitter", "Lighting", "Normalize"]
    assert steps[3].scale == (0.5, 1.0) and steps[6].std == 0.1
    torch.manual_seed(0)
    assert hard_train_transform(32)(_columns_image(80, 40)).shape == (3, 32, 32)


def test_idc_color_jitter_is_an_unclamped_lerp():
    white = torch.ones(3, 4, 4)
    torch.manual_seed(0)
    brightened = [IDCColorJitter(0.4, 0, 0)(white) for _ in range(50)]
    # brightness: white.lerp(black, alpha) = 1 - alpha, alpha ~ U(-0.4, 0.4), with no clamping to [0, 1]
    values = torch.tensor([b[0, 0, 0].item() for b in brightened])
    assert all(torch.equal(b, torch.full_like(white, b[0, 0, 0].item())) for b in brightened)
    assert values.max() > 1.2 and values.min() < 0.8 and (values - 1).abs().max() <= 0.4
    grey = torch.full((3, 4, 4), 0.3)
    assert torch.allclose(IDCColorJitter(0, 0.4, 0.4)(grey), grey)  # a uniform grey image is its own target
    image = torch.rand(3, 4, 4)
    torch.manual_seed(1)
    out = IDCColorJitter(0, 0.4, 0)(image)  # contrast: out - m = (1 - alpha)(image - m), m the mean grey level
    grey_mean = (0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2]).mean()
    ratio = (out - grey_mean) / (image - grey_mean)
    assert torch.allclose(ratio, ratio[0, 0, 0]) and 0 < abs(1 - ratio[0, 0, 0].item()) <= 0.4


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
    with pytest.raises(ValueError, match="`image_size` must be >= 64 pixels for convnet6, got 32"):
        resolve_recipe(EvalConfig(distilled="sample", student="ConvNet-6"), 10, 10, "cifar10")  # 32 px from CIFAR
    with pytest.raises(ValueError, match="`distilled` names a set twice"):
        EvalConfig(distilled=["a", "b", "a"])
    assert EvalConfig(distilled="a").distilled == ["a"]
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
    with caplog.at_level(logging.WARNING, logger="vldd.jobs.evaluate.data"):
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
    logging.getLogger(__name__).info("\n".join(evaluation_lines(result)))
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
    assert report["profile"]["family"] == "imagenet-subset" and report["profile"]["source"] == "default"  # why
    assert report["profile"]["evidence"][-1] == "images 64 px (shorter side, median of 8 sampled)"
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
                        batch_size=4, shuffle_factor=1, **TINY)
    result = evaluate(config)
    logging.getLogger(__name__).info("\n".join(evaluation_lines(result)))
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
    assert "hard-label protocol, resnetap10, 24 px, 2 epochs, 4 classes, IPC 3" in printed and "random" in printed
    report = json.loads(output.read_text())
    assert report["real"]["num_test_images"] == 20 and len(report["results"]["distilled"]["repeats"]) == 2
    assert [r["seed"] for r in report["results"]["random"]["repeats"]] == [0, 1]
    assert output.with_suffix(".png").is_file()
    assert read_manifest(run)["evaluation"][0]["results_file"] == str(output)
    assert main(["evaluate", "--distilled", str(run), "--epochs", "0"]) == 2
    assert "`epochs` must be >= 1" in capsys.readouterr().err


@pytest.mark.slow  # a subprocess run of the CLI
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
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "vldd.cli.commands"]
    for command, output in (([sys.executable, "-m", "vldd.cli.commands"], single), (launch, tmp_path / "sharded.json")):
        done = subprocess.run([*command, "evaluate", *flags, "--output", str(output)], env=env, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    one, two = (json.loads(p.read_text()) for p in (single, tmp_path / "sharded.json"))
    assert two["processes"] == 2 and one["processes"] == 1
    for name in ("distilled", "random"):
        curves = [[r["top1"] for r in report["results"][name]["repeats"]] for report in (one, two)]
        assert curves[0] == curves[1]
    kept = sorted(p.name for p in (tmp_path / ".sharded.parts").glob("*.json"))  # kept: a rerun resumes from them
    assert kept == ["distilled-0-0.json", "distilled-0-1.json", "random-0-0.json", "random-0-1.json"]


# ---------------------------------------------------------------------------------------------------------------
# Several distilled sets, and resuming


def _fake_training(calls):
    """Stands in for a training run: best/final accuracies chosen by hand per (training set, seed)."""
    table = {("distilled set 0", 0): (40.0, 30.0), ("distilled set 0", 1): (50.0, 50.0),
             ("distilled set 1", 0): (60.0, 60.0), ("distilled set 1", 1): (70.0, 50.0),
             ("random", 0): (20.0, 20.0), ("random", 1): (30.0, 20.0), ("full", 0): (80.0, 80.0),
             ("full", 1): (90.0, 80.0)}

    def train(train, test_batches, recipe, num_classes, teacher, *, seed, desc, **_):
        calls.append((desc, seed))
        name = desc.rsplit(" #", 1)[0]
        best, final = table["distilled set 0" if name == "distilled" else name, seed]  # one set: "distilled #r"
        return RepeatResult(seed, [1, 2], [best, final], len(train), 0.0)

    return train


def test_several_sets_report_mean_and_std_over_sets_and_repeats(tmp_path, monkeypatch, capsys):
    runs = [make_run(tmp_path / "seed0"), make_run(tmp_path / "seed1", ipc=2)]
    calls = []
    monkeypatch.setattr(evaluation, "train_repeat", _fake_training(calls))
    output = tmp_path / "together.json"
    code = main(["evaluate", "--distilled", str(runs[0]), str(runs[1]), "--real", "sample", "--repeats", "2",
                 "--baseline", "random", "--image-size", str(SIZE), "--output", str(output), "--quiet"])
    assert code == 0
    report = json.loads(output.read_text())
    # best over sets x repeats: 40, 50, 60, 70 -> mean 55, std sqrt((225 + 25 + 25 + 225) / 4) = sqrt(125)
    distilled = report["results"]["distilled"]
    assert distilled["best_mean"] == pytest.approx(55.0) and distilled["best_std"] == pytest.approx(125 ** 0.5)
    # final: 30, 50, 60, 50 -> mean 47.5, std sqrt((306.25 + 6.25 + 156.25 + 6.25) / 4) = sqrt(118.75)
    assert distilled["final_mean"] == pytest.approx(47.5) and distilled["final_std"] == pytest.approx(118.75 ** 0.5)
    assert [s["best_mean"] for s in report["sets"]] == [45.0, 65.0] and report["sets"][1]["best_std"] == 5.0
    assert [s["source"] for s in report["sets"]] == [str(r) for r in runs]
    assert report["sets"][1]["images_per_class"] == dict.fromkeys(report["classes"], 2)
    assert report["results"]["random"]["best_mean"] == 25.0
    assert "evaluation" not in read_manifest(runs[0])  # several sets: the report stands apart from the runs
    printed = capsys.readouterr().out
    assert "mean ± std over 4 trainings: 2 sets x 2 trainings per set (seeds 0..1)" in printed
    assert "distilled best  55.0 ± 11.2   final  47.5 ± 10.9" in printed
    assert f"set 1     best  65.0 ± 5.0   final  55.0 ± 5.0   (8 images)  {runs[1]}" in printed
    assert sorted(calls) == sorted([("distilled set 0 #1", 0), ("distilled set 0 #2", 1), ("distilled set 1 #1", 0),
                                    ("distilled set 1 #2", 1), ("random #1", 0), ("random #2", 1)])


def test_cli_takes_several_sets_at_once_or_repeated():
    from vldd.cli.commands import build_parser

    for argv in (["--distilled", "a", "b", "c"], ["--distilled", "a", "--distilled", "b", "c"]):
        args = build_parser().parse_args(["evaluate", *argv])
        assert vars(args)["eval:distilled"] == ["a", "b", "c"]


def test_sets_with_different_classes_are_refused(tmp_path):
    first = make_run(tmp_path / "a")
    other = tmp_path / "b"
    dataset = datasets.load_from_disk(str(first / "dataset"))
    dataset.filter(lambda row: row["label"] != dataset.features["label"].str2int("cross")).save_to_disk(
        str(other / "dataset"))
    (other / "manifest.json").write_text((first / "manifest.json").read_text())
    with pytest.raises(ValueError, match="distilled sets evaluated together must cover the same classes"):
        evaluate(EvalConfig(distilled=[str(first), str(other)], real="sample", epochs=1, **TINY))


def test_finished_trainings_are_reused_and_a_changed_recipe_retrains(tmp_path, monkeypatch):
    run = make_run(tmp_path / "run")
    config = dict(distilled=[str(run)], real="sample", repeats=2, baselines=["random"], image_size=SIZE,
                  output=str(tmp_path / "r.json"))
    calls = []
    monkeypatch.setattr(evaluation, "train_repeat", _fake_training(calls))
    first = evaluate(EvalConfig(**config, epochs=5))
    assert len(calls) == 4
    # an interrupted evaluation: one finished job is lost; the rerun trains only that one
    (tmp_path / ".r.parts" / "random-0-1.json").unlink()
    again = evaluate(EvalConfig(**config, epochs=5))
    assert calls[4:] == [("random #2", 1)]
    assert again.report["results"] == first.report["results"]
    evaluate(EvalConfig(**config, epochs=6))  # another recipe: everything trains again
    assert len(calls) == 4 + 1 + 4
    evaluate(EvalConfig(**config, epochs=6, resume=False))
    assert len(calls) == 4 + 1 + 4 + 4


# ---------------------------------------------------------------------------------------------------------------
# Baselines alone, several baselines, class names, totals


def test_baselines_alone_without_a_distilled_set(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(evaluation, "train_repeat", _fake_training(calls))
    output = tmp_path / "baselines.json"
    code = main(["evaluate", "--real", "sample", "--baseline", "random", "full", "--ipc", "2", "--repeats", "2",
                 "--image-size", str(SIZE), "--output", str(output), "--quiet"])
    assert code == 0
    # each baseline trained once per repeat, nothing else
    assert sorted(calls) == [("full #1", 0), ("full #2", 1), ("random #1", 0), ("random #2", 1)]
    report = json.loads(output.read_text())
    assert report["distilled"] is None and report["ipc"] == 2 and list(report["results"]) == ["random", "full"]
    assert report["robust"] == {}  # HLR/IOR compare a distilled set with the baselines: none here
    assert report["classes"] == SAMPLE_CLASSES  # every real class
    assert report["results"]["random"]["train_images"] == 2 * len(SAMPLE_CLASSES)
    assert report["results"]["full"]["train_images"] == 30 * len(SAMPLE_CLASSES)
    subset = report["results"]["random"]["repeats"][0]["subset_rows"]
    labels = load_sample("train")["label"]
    assert sorted(labels[row] for row in subset) == sorted(list(range(len(SAMPLE_CLASSES))) * 2)  # 2 per class
    printed = capsys.readouterr().out
    assert "5 classes, IPC 2" in printed and "random    best" in printed and "distilled" not in printed
    assert main(["evaluate", "--real", "sample", "--baseline", "random"]) == 2
    assert "baselines alone need `ipc`" in capsys.readouterr().err
    assert main(["evaluate", "--real", "sample", "--ipc", "2"]) == 2
    assert "nothing to evaluate" in capsys.readouterr().err


def test_both_baselines_beside_a_distilled_set_train_once_per_repeat(tmp_path, monkeypatch):
    run = make_run(tmp_path / "run")
    calls = []
    monkeypatch.setattr(evaluation, "train_repeat", _fake_training(calls))
    assert main(["evaluate", "--distilled", str(run), "--real", "sample", "--baseline", "random", "full",
                 "--repeats", "2", "--image-size", str(SIZE), "--no-record", "--quiet",
                 "--output", str(tmp_path / "r.json")]) == 0
    assert sorted(calls) == [("distilled #1", 0), ("distilled #2", 1), ("full #1", 0), ("full #2", 1),
                             ("random #1", 0), ("random #2", 1)]


def numbered_set(root):
    """A distilled set as RDED's folders name classes: labels 00000..00004 standing for the sample's classes."""
    train = load_sample("train")
    rows = [i for i, label in enumerate(train["label"]) if label in (0, 2, 4)][:: 10]  # circle, triangle, stripes
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=[f"{i:05d}" for i in range(5)])})
    dataset = datasets.Dataset.from_dict({"image": [train[i]["image"] for i in rows],
                                          "label": [train[i]["label"] for i in rows]}, features=features)
    dataset.save_to_disk(str(root))
    return root, [train[i]["label"] for i in rows]


@pytest.mark.parametrize("kind", ["lines", "json list", "json map"])
def test_class_names_file_maps_numbered_labels_to_the_real_names(tmp_path, monkeypatch, kind):
    folder, labels = numbered_set(tmp_path / "numbered")
    if kind == "lines":
        names = tmp_path / "names.txt"
        names.write_text("\n".join(SAMPLE_CLASSES) + "\n\n")
    else:
        names = tmp_path / "names.json"
        names.write_text(json.dumps(SAMPLE_CLASSES if kind == "json list"
                                    else {f"{i:05d}": n for i, n in enumerate(SAMPLE_CLASSES)}))
    seen = []

    def train(train, test_batches, recipe, num_classes, teacher, *, seed, desc, **_):
        seen.append(train)
        return RepeatResult(seed, [1], [50.0], len(train), 0.0)

    monkeypatch.setattr(evaluation, "train_repeat", train)
    result = evaluate(EvalConfig(distilled=str(folder), real="sample", class_names=str(names), repeats=1,
                                 image_size=SIZE, output=str(tmp_path / "r.json")))
    assert result.classes == ["circle", "triangle", "stripes"]
    (trained,) = seen
    # every distilled image trains as the real class its number stands for
    assert [result.classes[t] for t in trained.targets] == [SAMPLE_CLASSES[label] for label in labels]
    assert result.report["distilled"]["class_names"] == str(names)


def test_numbered_labels_without_names_are_a_clear_error(tmp_path):
    folder, _ = numbered_set(tmp_path / "numbered")
    with pytest.raises(ValueError, match=r"the distilled set's names are \['00000', '00002', '00004'\], the real "
                                         r"set's \['circle', 'square', 'triangle', 'cross', 'stripes'\]"):
        evaluate(EvalConfig(distilled=str(folder), real="sample", epochs=1, **TINY))
    short = tmp_path / "short.txt"
    short.write_text("circle\nsquare\n")
    with pytest.raises(ValueError, match="holds 2 names; the distilled set has 5 labels"):
        evaluate(EvalConfig(distilled=str(folder), real="sample", class_names=str(short), epochs=1, **TINY))


def test_resumed_report_time_is_the_sum_of_all_its_trainings(tmp_path, monkeypatch, capsys):
    run = make_run(tmp_path / "run")
    seconds = {("distilled", 0): 10.0, ("distilled", 1): 20.0, ("random", 0): 30.0, ("random", 1): 40.0}
    calls = []

    def train(train, test_batches, recipe, num_classes, teacher, *, seed, desc, **_):
        calls.append(desc)
        return RepeatResult(seed, [1], [50.0], len(train), seconds[desc.rsplit(" #", 1)[0], seed])

    monkeypatch.setattr(evaluation, "train_repeat", train)
    config = dict(distilled=[str(run)], real="sample", repeats=2, baselines=["random"], image_size=SIZE,
                  output=str(tmp_path / "r.json"), record=False)
    first = evaluate(EvalConfig(**config))
    assert (first.report["seconds"], first.report["trainings"], first.report["reused"]) == (100.0, 4, 0)
    (tmp_path / ".r.parts" / "distilled-0-1.json").unlink()  # interrupted: one training lost
    again = evaluate(EvalConfig(**config))
    assert calls[4:] == ["distilled #2"]
    # 10 + 20 + 30 + 40: the three reused trainings count as much as the one trained now
    assert (again.report["seconds"], again.report["trainings"], again.report["reused"]) == (100.0, 4, 3)
    assert evaluation_lines(again)[-2] == "  4 trainings, 100.0s of training (3 reused from an earlier run)"


@pytest.mark.parametrize(("family", "size", "factor"), [("cifar10", 32, 1), ("tiny-imagenet", 64, 2)])
def test_report_names_the_dataset_profile_the_recipe_follows(tmp_path, monkeypatch, family, size, factor):
    # whatever the detection decides (vldd.configs.profiles), evaluate follows that profile and says which it was
    from vldd.configs.profiles import Recognition

    monkeypatch.setattr(evaluation, "recognise_source",
                        lambda *args, **kwargs: Recognition(PROFILES[family], "override", ("told",)))
    monkeypatch.setattr(evaluation, "train_repeat", _fake_training([]))
    result = evaluate(EvalConfig(real="sample", baselines=["random"], ipc=1, repeats=1, protocol="soft",
                                 teacher=str(_train_teacher(tmp_path / "t.pt")), output=str(tmp_path / "r.json")))
    profile = result.report["profile"]
    assert (profile["family"], profile["source"], profile["evidence"]) == (family, "override", ["told"])
    assert (profile["image_size"], profile["shuffle_factor"], profile["small_stem"]) == (size, factor, True)
    assert result.recipe.image_size == size and result.recipe.shuffle_factor == factor
    assert f"  dataset profile {family} ({size} px, ShufflePatches {factor}, small ResNet stem)" == \
        evaluation_lines(result)[1]


@pytest.mark.slow  # a subprocess run of the benchmark script
def test_cifar_random_subset_benchmark_runs_in_smoke_mode(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "cifar_random_subsets.py"
    done = subprocess.run([sys.executable, str(script), "--smoke", "--device", "cpu", "--workdir", str(tmp_path)],
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ConvNet-3, 32 px, vldd hard-label recipe" in done.stdout
    assert "random IPC 1       14.4 ± 2.0" in done.stdout  # the DC paper's figure beside vldd's
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [row["set"] for row in summary] == ["random IPC 1", "random IPC 2"]
    report = json.loads((tmp_path / "random-ipc1.json").read_text())
    assert report["student"] == "convnet3" and report["recipe"]["image_size"] == 32 and report["distilled"] is None
    assert report["results"]["random"]["train_images"] == 10 and len(report["classes"]) == 10


def test_rded_teacher_file_with_a_names_file_aligns_its_outputs_by_name(tmp_path, monkeypatch):
    import torchvision

    rded = torchvision.models.resnet18(num_classes=len(SAMPLE_CLASSES))  # RDED's resnet18_modified, cut to 5 outputs
    rded.conv1 = torch.nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    rded.maxpool = torch.nn.Identity()
    torch.save({"model": rded.state_dict()}, tmp_path / "rded.pth")
    order = list(reversed(SAMPLE_CLASSES))  # the teacher's outputs in another order than the real set's labels
    (tmp_path / "teacher-names.txt").write_text("\n".join(order) + "\n")
    seen = []

    def train(train, test_batches, recipe, num_classes, teacher, *, seed, desc, **_):
        seen.append(teacher)
        return RepeatResult(seed, [1], [50.0], len(train), 0.0)

    monkeypatch.setattr(evaluation, "train_repeat", train)
    config = dict(real="sample", baselines=["random"], ipc=1, repeats=1, protocol="soft", image_size=32,
                  teacher=str(tmp_path / "rded.pth"), output=str(tmp_path / "r.json"))
    result = evaluate(EvalConfig(**config, teacher_class_names=str(tmp_path / "teacher-names.txt")))
    # student class i (the real set's order) reads the teacher output that carries its name
    assert seen[0].index.tolist() == [order.index(name) for name in SAMPLE_CLASSES] == [4, 3, 2, 1, 0]
    assert result.report["teacher"]["arch"] == "rded:resnet18_modified"
    with pytest.raises(ValueError, match="RDED teacher, which stores no class names"):
        evaluate(EvalConfig(**config))
    with pytest.raises(ValueError, match="`teacher_class_names` 'missing.txt' is not a file"):
        evaluate(EvalConfig(**config, teacher_class_names="missing.txt"))


@pytest.mark.parametrize("clean_forward", [True, False])
def test_soft_clean_forward_runs_the_student_on_the_unmixed_batch_first(tmp_path, monkeypatch, clean_forward):
    import vldd.models.students

    run = make_run(tmp_path / "run")
    teacher = save_classifier(build_student("resnetap10", len(SAMPLE_CLASSES), SIZE, WIDTH).eval(),
                              tmp_path / "teacher.pt", arch="resnetap10", class_names=SAMPLE_CLASSES, image_size=SIZE,
                              width=WIDTH)
    calls = []  # (train mode, gradients on) of every student forward
    real_build = vldd.models.students.build_student

    def counting_build(*args, **kwargs):
        model = real_build(*args, **kwargs)
        model.register_forward_hook(lambda m, i, o: calls.append((m.training, torch.is_grad_enabled())))
        return model

    monkeypatch.setattr(vldd.models.students, "build_student", counting_build)
    config = EvalConfig(distilled=str(run), protocol="soft", teacher=str(teacher), student="resnetap10", epochs=1,
                        batch_size=4, shuffle_factor=1, record=False, clean_forward=clean_forward, **TINY)
    result = evaluate(config)
    steps = calls.count((True, True))
    assert steps == 3  # 12 images in batches of 4
    assert calls.count((True, False)) == (steps if clean_forward else 0)
    if clean_forward:  # the extra forward comes first in each step
        train_calls = [c for c in calls if c[0]]
        assert train_calls == [(True, False), (True, True)] * steps
    assert result.report["recipe"]["clean_forward"] is clean_forward
