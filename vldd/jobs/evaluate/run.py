"""`evaluate`, the entry point: opens the sets, resolves the recipe, trains every (training set, repeat) job once
(resuming finished ones), and writes the report."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path

import numpy as np

from ...configs.base import check, fingerprint
from ...configs.evaluate import EvalConfig
from ...core.devices import Processes, resolve_device
from ...core.runs import read_json, write_json
from ...data.sources import open_dataset, recognise_source
from .data import (
    LabelledImages,
    align_classes,
    cached_batches,
    data_loader,
    images_and_labels,
    open_distilled,
    open_validation,
    random_subset,
    rename_classes,
    select_classes,
)
from .recipes import resolve_recipe
from .results import (
    ROBUST_NOTE,
    EvalResult,
    RepeatResult,
    RunResult,
    build_report,
    manifest_entry,
    plot_curves,
    profile_entry,
    record_evaluation,
    run_robust_scores,
)
from .train import amp_dtype, load_teacher, train_repeat

logger = logging.getLogger(__name__)


def evaluate(config: EvalConfig, *, device=None, progress: bool = False, processes=None) -> EvalResult:
    """Trains students on the distilled set (and baselines) under one protocol and tests them on real images.

    Args:
        config: what to evaluate and how; see `EvalConfig`.
        device: overrides `config.device` ("cpu", "cuda", a torch.device).
        progress: show a progress bar per training run.
        processes: a `vldd.core.devices.Processes` when several processes share the work (`accelerate launch`): the
            (training set, repeat) jobs are dealt out across them, and the main process writes the report.

    Returns:
        An `EvalResult`; the results JSON and accuracy-vs-epoch PNG are written to `config.output` (default: the run
        directory's `evaluation/<protocol>-<student>.json`, or `evaluation-<protocol>-<student>.json`), and the
        summary is recorded in the run's manifest.
    """
    import torch

    from ...data.augment import eval_transform

    started = time.perf_counter()
    device = torch.device(device) if device is not None else resolve_device(config.device)
    amp = amp_dtype(config, device)
    workers = config.num_workers if config.num_workers is not None else (
        min(8, os.cpu_count() or 1) if device.type == "cuda" else 0)

    # 1. Open the distilled sets (a run directory holds its set in dataset/ beside its manifest); none = baselines only.
    sets = [open_distilled(path, config.distilled_split) for path in config.distilled]
    if config.class_names is not None:
        for d in sets:
            d.names = rename_classes(d.names, config.class_names)
    run_dir = sets[0].run_dir if len(sets) == 1 else None

    # 2. Open the real test split and align classes by label name; every set must cover the same classes.
    source = sets[0].manifest.get("source", {}) if sets else {}
    real, config_name, revision = config.real, config.real_config_name, config.real_revision
    if real is None:  # the run's own source dataset, at the configuration and revision it was distilled from
        real, config_name = source.get("dataset"), config_name or source.get("config_name")
        revision = revision or source.get("revision")
    check(real is not None, "`real` must name the real dataset (only a run directory's manifest can supply it)")
    val, val_split = open_validation(real, config.val_split, config_name=config_name, revision=revision)
    v_images, real_names, v_labels = images_and_labels(val)
    if sets:
        classes, _, real_ids = align_classes(sets[0].names, sets[0].labels, real_names)
    else:  # baselines alone: every real class, IPC as given
        classes, real_ids = list(real_names), list(range(len(real_names)))
    train_sets, set_counts = [], []
    for d in sets:
        d_classes, target_of, _ = align_classes(d.names, d.labels, real_names)
        check(d_classes == classes, f"distilled sets evaluated together must cover the same classes: "
                                     f"{d.source!r} has {d_classes[:10]}, {sets[0].source!r} has {classes[:10]}")
        train_sets.append(LabelledImages(d.images, list(range(len(d.labels))), [target_of[int(v)] for v in d.labels]))
        set_counts.append(np.bincount(train_sets[-1].targets, minlength=len(classes)).tolist())
    counts = set_counts[0] if sets else [config.ipc] * len(classes)
    ipc = max(max(c) for c in set_counts) if sets else config.ipc
    if any(min(c) != ipc for c in set_counts):
        logger.warning("the distilled sets have %d to %d images per class; rules use IPC %d",
                       min(min(c) for c in set_counts), ipc, ipc)
    test = select_classes(v_images, v_labels, real_ids, config.val_per_class)
    logger.info("evaluating %s of %d classes (IPC %d) on %d %r images of %s",
                f"{len(sets)} distilled set(s)" if sets else f"the baselines {config.baselines}", len(classes), ipc,
                len(test), val_split, real)

    # 3. Real train images for the baselines.
    pool, pool_fingerprint = None, None
    if config.baselines:
        train_split = open_dataset(real, config.train_split, config_name, revision)
        t_images, t_names, t_labels = images_and_labels(train_split)
        check(t_names == real_names, f"real splits {config.train_split!r} and {val_split!r} have different labels")
        pool = select_classes(t_images, t_labels, real_ids)
        pool_fingerprint = getattr(train_split, "_fingerprint", None)

    # 4. Recipe (from the real dataset's profile, recognised from its content as distillation does; a profile the
    #    run was told to use wins), teacher and the test batches.
    told = ((sets[0].manifest.get("config") or {}).get("data") or {}).get("profile") if real == source.get(
        "dataset") else None  # the run's data.profile, for the run's own source
    recognition = recognise_source(real, v_images, v_images.column_names[0], real_names, told)
    logger.info("real dataset %s: %s", real, recognition.describe())
    recipe = resolve_recipe(config, ipc, len(classes), real, recognition)
    teacher = load_teacher(config, recipe, classes, real_names, real_ids, device) if config.protocol == "soft" else None
    resize = recipe.image_size if config.protocol == "hard" else None  # Minimax: Resize(224); RDED: Resize(256)
    test_loader = data_loader(test, eval_transform(recipe.image_size, resize), 256 if device.type == "cuda" else 64,
                              shuffle=False, seed=config.seed, workers=workers, device=device)
    test_batches = cached_batches(test_loader)

    if config.output:
        output = Path(config.output)
    elif run_dir is not None:
        output = run_dir / "evaluation" / f"{config.protocol}-{config.student}.json"
    elif not sets:
        output = Path(f"baselines-{config.protocol}-{config.student}-ipc{ipc}.json")
    else:
        output = Path(f"evaluation-{config.protocol}-{config.student}.json")

    # 5. Train every training set under the identical recipe and seeds. Each finished (training set, repeat) job is
    #    kept beside the report with a fingerprint of its inputs: a rerun reuses it (resume), and with several
    #    processes each takes its share of the jobs and the main process gathers them.
    processes = processes or Processes()
    names = (["distilled"] if sets else []) + config.baselines
    jobs = [(name, i, r) for name in names for i in range(len(sets) if name == "distilled" else 1)
            for r in range(config.repeats)]
    common = [recipe.to_dict(), real, config_name, revision, val_split, config.val_per_class, len(test), classes,
              config.teacher, (teacher.meta if teacher else None), str(amp)]
    keys = {job: fingerprint(*common, job[2] + config.seed,
                             [sets[job[1]].fingerprint, sets[job[1]].source] if job[0] == "distilled"
                             else [job[0], pool_fingerprint, config.train_split, counts])
            for job in jobs}
    parts = output.parent / f".{output.stem}.parts"
    # Every process reads which jobs are finished before any trains, so all agree on what was reused.
    kept = {job: read_json(parts / f"{job[0]}-{job[1]}-{job[2]}.json", default={}) if config.resume else {}
            for job in jobs}
    reused = {job for job in jobs if kept[job].get("key") == keys[job]}
    processes.wait()
    done: dict[tuple[str, int, int], RepeatResult] = {}
    for job in processes.share(jobs):
        name, i, r = job
        part = parts / f"{name}-{i}-{r}.json"
        label = f"{name}{f' set {i}' if name == 'distilled' and len(sets) > 1 else ''} #{r + 1}"
        if job in reused:
            done[job] = RepeatResult(**kept[job]["result"])
            logger.info("%s: reusing the finished training in %s", label, part)
            continue
        seed = config.seed + r
        rows = None
        if name == "distilled":
            train = train_sets[i]
        elif name == "random":
            train = random_subset(pool, counts, [seed, 1])
            rows = train.rows
        else:
            train = pool
        repeat = train_repeat(train, test_batches, recipe, len(classes), teacher, seed=seed, device=device,
                              amp=amp, workers=workers, desc=label, progress=progress)
        repeat.subset_rows = rows
        logger.info("%s: best %.2f%% (epoch %d), final %.2f%%", label, repeat.best, repeat.best_epoch, repeat.final)
        done[job] = repeat
        write_json(part, {"key": keys[job], "result": dataclasses.asdict(repeat)})
    processes.wait()
    if processes.count > 1:
        done = {job: RepeatResult(**read_json(parts / f"{job[0]}-{job[1]}-{job[2]}.json")["result"]) for job in jobs}
    per_set = [RunResult(d.source, [done["distilled", i, r] for r in range(config.repeats)])
               for i, d in enumerate(sets)]
    runs = {"distilled": RunResult("distilled", [rep for run in per_set for rep in run.repeats])} if sets else {}
    runs.update({name: RunResult(name, [done[name, 0, r] for r in range(config.repeats)])
                 for name in config.baselines})

    # 6. Report: JSON, plot and manifest entry.
    report = build_report(config, recipe, classes, counts, real, val_split, len(test), run_dir, source, runs, teacher,
                          device, amp, time.perf_counter() - started)
    report["robust"] = run_robust_scores(runs)  # HLR / IOR / LRS when the baselines they need were trained
    report["robust_definition"] = ROBUST_NOTE
    report["trainings"], report["reused"] = len(jobs), len(reused)
    report["sets"] = [{"source": d.source, "run_dir": str(d.run_dir) if d.run_dir else None,
                       "images_per_class": dict(zip(classes, c, strict=True)), **run.to_dict()}
                      for d, c, run in zip(sets, set_counts, per_set, strict=True)]
    report["processes"] = processes.count
    report["profile"] = profile_entry(recognition)  # which per-dataset settings the recipe used, and why
    result = EvalResult(config, recipe, classes, ipc, runs, report, sets=per_set)
    result.results_path, result.plot_path = output, output.with_suffix(".png")
    report["plot"] = result.plot_path.name
    if processes.is_main:
        plot_curves(runs, result.plot_path, f"{config.protocol}-label protocol, {config.student}, IPC {ipc}")
        write_json(result.results_path, report)
        if run_dir is not None and config.record:
            record_evaluation(run_dir, manifest_entry(report, result.results_path, run_dir))
    processes.wait()
    return result

