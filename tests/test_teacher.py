"""`vldd teacher`: a checkpoint `--protocol soft --teacher` loads, the schedule, the reported val accuracy, resuming."""

import json

import pytest
import torch

from vldd.cli.commands import main
from vldd.data.augment import eval_transform
from vldd.data.sample import SAMPLE_CLASSES, load_sample
from vldd.jobs.evaluate import EvalConfig, evaluate
from vldd.jobs.evaluate import train as evaluation
from vldd.jobs.teacher import TeacherConfig, state_path, train_teacher
from vldd.models.students import load_classifier

SIZE = 24
TINY = dict(real="sample", arch="resnetap10", width=0.125, image_size=SIZE, epochs=2, batch_size=32, lr=0.05)


def test_cli_teacher_on_the_sample_loads_as_a_soft_label_teacher(tmp_path, capsys):
    output = tmp_path / "teacher.pt"
    code = main(["teacher", "--real", "sample", "--arch", "resnetap10", "--width", "0.125", "--image-size",
                 str(SIZE), "--epochs", "2", "--batch-size", "32", "--lr", "0.05", "--output", str(output),
                 "--device", "cpu", "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert f"teacher resnetap10 at {SIZE} px, 5 classes, 2 epochs: val top-1" in printed
    assert f"--teacher {output}" in printed
    checkpoint = torch.load(output, weights_only=True)
    assert checkpoint["class_names"] == SAMPLE_CLASSES and checkpoint["image_size"] == SIZE
    history = checkpoint["history"]
    # cosine annealing per epoch: epoch 1 at lr, epoch 2 at lr * (1 + cos(pi / 2)) / 2 = lr / 2
    assert [h["lr"] for h in history] == pytest.approx([0.05, 0.025])
    assert checkpoint["recipe"]["augmentations"].startswith(f"Resize({SIZE}), CenterCrop({SIZE}), RandomCrop({SIZE}, "
                                                           f"padding={SIZE // 8})")

    # the reported val accuracy is the checkpoint's own on the sample's validation split
    model, meta = load_classifier(output)
    val = load_sample("validation")
    transform = eval_transform(SIZE)
    with torch.no_grad():
        predicted = model(torch.stack([transform(image) for image in val["image"]])).argmax(1)
    top1 = 100.0 * (predicted == torch.tensor(val["label"])).float().mean().item()
    assert history[-1]["val_top1"] == pytest.approx(top1)

    # ... and the soft-label protocol takes it as its teacher (here on a random real subset, no distilled set)
    result = evaluate(EvalConfig(real="sample", baselines=["random"], ipc=2, protocol="soft", teacher=str(output),
                                 student="resnetap10", student_width=0.125, image_size=SIZE, epochs=1, repeats=1,
                                 shuffle_factor=1, output=str(tmp_path / "soft.json")))
    assert result.report["teacher"]["class_names"] == SAMPLE_CLASSES
    assert result.report["teacher"]["image_size"] == SIZE and result.report["teacher"]["arch"] == "resnetap10"
    assert result.runs["random"].repeats[0].train_images == 2 * len(SAMPLE_CLASSES)


def test_teacher_resumes_after_an_interruption_to_the_same_weights(tmp_path, monkeypatch):
    whole = train_teacher(TeacherConfig(**TINY, output=str(tmp_path / "whole" / "t.pt"), device="cpu"))
    assert whole.resumed_from is None and len(whole.history) == 2

    calls = []
    scored = evaluation.top1_accuracy

    def stop_after_one_epoch(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed during epoch 2's score, after epoch 1's state was written
        return scored(*args)

    monkeypatch.setattr(evaluation, "top1_accuracy", stop_after_one_epoch)
    config = TeacherConfig(**TINY, output=str(tmp_path / "cut" / "t.pt"), device="cpu")
    with pytest.raises(KeyboardInterrupt):
        train_teacher(config)
    assert not (tmp_path / "cut" / "t.pt").exists()
    assert len(torch.load(state_path(config.output), weights_only=True)["history"]) == 1
    monkeypatch.setattr(evaluation, "top1_accuracy", scored)

    resumed = train_teacher(config)
    assert resumed.resumed_from == 1
    assert json.dumps(resumed.history) == json.dumps(whole.history)
    a = torch.load(whole.output, weights_only=True)["state_dict"]
    b = torch.load(resumed.output, weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)

    # other settings cannot continue that state: an error, unless asked to start over
    with pytest.raises(ValueError, match="holds a teacher trained with other settings"):
        train_teacher(TeacherConfig(**{**TINY, "lr": 0.1}, output=config.output, device="cpu"))
    fresh = train_teacher(TeacherConfig(**{**TINY, "lr": 0.1}, output=config.output, device="cpu", resume=False))
    assert fresh.resumed_from is None and fresh.history[0]["lr"] == pytest.approx(0.1)


def test_teacher_config_defaults_and_errors():
    config = TeacherConfig(real="sample")
    assert (config.arch, config.epochs, config.batch_size, config.lr, config.momentum, config.weight_decay) == (
        "resnet18", 200, 128, 0.1, 0.9, 5e-4)
    with pytest.raises(ValueError, match="`width` must be 1.0 for resnet18, got 0.5"):
        TeacherConfig(real="sample", width=0.5)
    with pytest.raises(ValueError, match="`mixed_precision` must be one of"):
        TeacherConfig(real="sample", mixed_precision="fp8")
    with pytest.raises(ValueError, match="`epochs` must be >= 1, got 0"):
        TeacherConfig(real="sample", epochs=0)


@pytest.mark.slow  # two processes under accelerate launch (gloo on CPU)
def test_teacher_trains_under_accelerate_launch(tmp_path):
    import os
    import subprocess
    import sys

    output = tmp_path / "t.pt"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "vldd.cli.commands"]
    flags = ["teacher", "--real", "sample", "--arch", "resnetap10", "--width", "0.125", "--image-size", str(SIZE),
             "--epochs", "2", "--batch-size", "32", "--lr", "0.05", "--output", str(output), "--device", "cpu",
             "--quiet"]
    done = subprocess.run([*launch, *flags], env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("teacher resnetap10 at 24 px") == 1  # printed by the main process only
    checkpoint = torch.load(output, weights_only=True)
    assert checkpoint["class_names"] == SAMPLE_CLASSES and [h["epoch"] for h in checkpoint["history"]] == [1, 2]
    model, _ = load_classifier(output)
    assert model(torch.zeros(1, 3, SIZE, SIZE)).shape == (1, len(SAMPLE_CLASSES))
