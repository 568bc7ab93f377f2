"""The orchestrator: one call runs the VLCP distillation end to end, resumably, one class at a time.

Example:
    >>> from vldd.configs.distill import load_config
    >>> result = distill(load_config(overrides={"preset": "tiny", "output": "runs/tiny"}))
    >>> result.dataset
"""

from __future__ import annotations

import gc
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from .. import __version__
from ..configs.base import fingerprint
from ..configs.distill import STAGE_COMMANDS, TINY_NOTE, DistillConfig
from ..core import seeding
from ..core.devices import Processes, resolve_device, resolve_dtype
from ..core.provenance import public_name, resolve_revision, versions
from ..core.runs import (
    StageDir,
    atomic_path,
    check_output_dir,
    read_json,
    result_file,
    update_manifest,
    work_dir,
    write_json,
    write_text,
)
from ..data.sources import SourceDataset, load_source
from .finetune import finetune_settings

if TYPE_CHECKING:
    import datasets

    from .finetune import FinetuneConfig

logger = logging.getLogger(__name__)

STAGES = ("caption", "finetune", "prototypes", "text", "generate")
NOT_FINETUNED = "not fine-tuned (D4M-style)"


@dataclass
class DistillResult:
    """What a run produced."""

    run_dir: Path
    dataset: datasets.Dataset | None = None  # the distilled set, when the generate stage ran
    manifest: dict = field(default_factory=dict)


# --- stage 1: captions -------------------------------------------------------------------------------------------

def caption_stage(source: SourceDataset, config: DistillConfig, stage: StageDir, captioner, classes: list[int],
                  progress: bool) -> None:
    from ..stages.caption import build_prompt, caption_images

    published = None
    if config.caption.from_hub:
        from ..hub.captions import load_published_captions

        published = load_published_captions(config.caption.from_hub, class_names=source.class_names)
        published = dict(zip(published["source_index"], published["caption"]))
    for label in _progress(classes, "captions", progress):
        if stage.has(label, ".json"):
            continue
        images, rows, skipped = source.load_class(label)
        class_name = source.prompt_names[label]  # e.g. "tench, Tinca tinca" for a folder named n01440764
        prompt = build_prompt(config.caption.prompt, class_name)
        if published is not None:
            missing = [r for r in rows if r not in published]
            if missing:
                raise ValueError(f"published captions {config.caption.from_hub!r} lack {len(missing)} images of class "
                                 f"{class_name!r} (e.g. source rows {missing[:5]})")
            captions = [published[r] for r in rows]
        else:
            c = config.caption
            captions = caption_images(captioner, images, class_name, prompt_template=c.prompt, do_sample=c.do_sample,
                                      temperature=c.temperature, max_new_tokens=c.max_new_tokens,
                                      batch_size=c.batch_size, seed=seeding.derive_seed(config.seed, seeding.CAPTION, label),
                                      conversation=c.conversation, pad_to_square=c.pad_to_square,
                                      clean=c.clean_captions)
        write_json(stage.file(label, ".json"), {"rows": rows, "captions": captions, "prompt": prompt,
                                                "skipped": skipped})
        del images  # before the next class loads: one class in memory at a time, not two


def write_captions_dataset(source: SourceDataset, config: DistillConfig, stage: StageDir, run_dir: Path) -> int:
    from ..stages.caption import captions_dataset

    rows, labels, captions, prompts = [], [], [], []
    for label in source.classes:
        record = read_json(stage.file(label, ".json"))
        rows += record["rows"]
        labels += [label] * len(record["rows"])
        captions += record["captions"]
        prompts += [record["prompt"]] * len(record["rows"])
    model = config.caption.from_hub or config.caption.model
    dataset = captions_dataset(rows, labels, captions, prompts, model, source.class_names)
    with atomic_path(run_dir / "captions") as tmp:
        dataset.save_to_disk(str(tmp))
    return len(rows)


# --- stage 2: fine-tuning ------------------------------------------------------------------------------------------

def finetune_stage(config: DistillConfig, tune: FinetuneConfig, stage: StageDir, source: SourceDataset, run_dir: Path,
                   processes: Processes, cache_dir, progress: bool) -> None:
    """Fine-tunes (or resumes fine-tuning) into `stage.path` unless a finished model is there; every process joins."""
    from .finetune import SUMMARY, finetune

    if (stage.path / SUMMARY).is_file():
        return
    if not (run_dir / "captions").is_dir():
        raise ValueError(f"fine-tuning needs the run's captions ({run_dir / 'captions'} is missing); run "
                         "`vldd caption` on this run directory first")
    if processes.is_main:  # the fine-tuning reads the source (dataset, split, revision) from the manifest
        update_manifest(run_dir, source=_source_record(config, source))
    processes.wait()
    finetune(tune, cache_dir=cache_dir, progress=progress)  # under accelerate, each process trains on its share
    processes.wait()


def vae_fingerprint(model_id: str, revision: str | None = None, cache_dir: str | Path | None = None) -> str:
    """Names a Stable Diffusion checkpoint's VAE by its config and weights, not by the checkpoint's id.

    A fine-tuned checkpoint keeps its base's VAE, so image prototypes encoded with either are the same and keep the
    same fingerprint. Reads the local directory, or the Hub cache (downloading only the VAE's config and weights).

    Args:
        model_id: SD checkpoint id or directory (`tiny://` ids are built in `cache_dir`).
        revision: Hub revision.
        cache_dir: where tiny models are built.
    """
    import hashlib
    import json

    from ..models.registry import resolve_model

    path = Path(resolve_model(model_id, cache_dir))
    if not path.is_dir():
        from huggingface_hub import snapshot_download

        try:
            path = Path(snapshot_download(model_id, revision=revision, allow_patterns=[
                "vae/config.json", "vae/diffusion_pytorch_model.safetensors"]))
        except (OSError, ValueError) as err:  # unknown repo or revision, offline and uncached, HTTP/auth errors
            raise ValueError(f"could not read the VAE of Stable Diffusion model {model_id!r}: {err}") from err
    vae = path / "vae"
    if not (vae / "config.json").is_file():
        raise ValueError(f"Stable Diffusion model {model_id!r} has no vae/config.json")
    config = {k: v for k, v in json.loads((vae / "config.json").read_text()).items() if not k.startswith("_")}
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    # the weights the loader reads: unsharded or sharded, no variant (diffusion_pytorch_model.fp16.* is another file)
    files = sorted(f for f in vae.glob("diffusion_pytorch_model*.safetensors") if f.name.count(".") == 1) or sorted(
        f for f in vae.glob("diffusion_pytorch_model*.bin") if f.name.count(".") == 1)
    if not files:
        raise ValueError(f"Stable Diffusion model {model_id!r} has no VAE weights in {vae}")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            state.update(load_file(file))
        else:
            state.update(torch.load(file, map_location="cpu", weights_only=True))
    for key in sorted(state):  # tensors, not files: the same weights saved again hash the same
        tensor = state[key].contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


# --- stage 3: image prototypes -------------------------------------------------------------------------------------

def prototype_stage(source: SourceDataset, config: DistillConfig, stage: StageDir, vae, plan: dict[int, int],
                    classes: list[int], progress: bool) -> None:
    from ..stages.prototypes import build_prototypes, count_inliers, encode_images

    p = config.prototypes
    for label in _progress(classes, "prototypes", progress):
        if stage.has(label, ".pt"):
            continue
        images, rows, skipped = source.load_class(label)
        k = plan[label]
        usable = count_inliers(len(images), p.contamination)
        if usable < k:  # undecodable images left too few
            if config.data.too_few_images == "error" or usable < 1:
                raise ValueError(f"class {source.class_names[label]!r}: {len(images)} decodable images ({skipped} "
                                 f"undecodable), {usable} after outlier removal, fewer than IPC {k}")
            k = usable
        latents = encode_images(vae, images, resolution=p.resolution, seeds=rows, seed=config.seed,
                                batch_size=p.encode_batch_size)
        device = vae.device if vae is not None else "cpu"  # LOF and k-means run where the VAE runs (GPU)
        protos = build_prototypes(latents.to(device), k, contamination=p.contamination, n_neighbors=p.lof_neighbors,
                                  n_init=p.n_init, max_iter=p.max_iter, tol=p.tol,
                                  seed=seeding.derive_seed(config.seed, seeding.KMEANS, label))
        flat, centers = latents.flatten(1), protos.centers.flatten(1)
        nearest = []
        for c in range(k):
            members = (protos.assignment == c).nonzero().squeeze(1)
            if len(members) == 0:  # only when a class has fewer distinct images than clusters
                raise ValueError(f"class {source.class_names[label]!r}: cluster {c} of {k} is empty; the class has "
                                 "too few distinct images for IPC " + str(k))
            nearest.append(int(members[(flat[members] - centers[c]).norm(dim=1).argmin()]))
        with atomic_path(stage.file(label, ".pt")) as tmp:
            torch.save({"rows": rows, "centers": protos.centers, "assignment": protos.assignment.tolist(),
                        "cluster_sizes": protos.cluster_sizes, "inertia": protos.inertia, "nearest": nearest,
                        "skipped": skipped}, tmp)
        del images, latents, flat  # before the next class loads: one class in memory at a time, not two


# --- stage 4: text prototypes --------------------------------------------------------------------------------------

def text_stage(source: SourceDataset, config: DistillConfig, stage: StageDir, captions: StageDir,
               prototypes: StageDir, classes: list[int]) -> None:
    from ..stages.text_prototypes import select_text_prototypes

    for label in classes:
        if stage.has(label, ".json"):
            continue
        caps = read_json(captions.file(label, ".json"))
        protos = torch.load(prototypes.file(label, ".pt"), weights_only=True)
        by_row = dict(zip(caps["rows"], caps["captions"]))
        missing = [r for r in protos["rows"] if r not in by_row]
        if missing:
            raise ValueError(f"class {source.class_names[label]!r}: no caption for source rows {missing[:5]}")
        descriptions = [by_row[r] for r in protos["rows"]]
        if config.text.mode == "class_name":  # D4M-style: the class name is every cluster's prompt
            write_json(stage.file(label, ".json"), [{"prompt": source.prompt_names[label], "top_words": [], "score": 0,
                                                     "source_row": None, "fallback": None}
                                                    for _ in protos["cluster_sizes"]])
            continue
        chosen = select_text_prototypes(descriptions, protos["assignment"], source.prompt_names[label],
                                        top_k=config.text.top_k, common_threshold=config.text.common_threshold,
                                        fallback=config.text.fallback, nearest=protos["nearest"])
        for cluster, proto in enumerate(chosen):
            if proto.fallback:
                logger.warning("class %r cluster %d: no description scored above 0; using the %s fallback",
                               source.class_names[label], cluster, proto.fallback)
        write_json(stage.file(label, ".json"), [
            {"prompt": t.prompt, "top_words": t.top_words, "score": t.score,
             "source_row": protos["rows"][t.member] if t.member is not None else None, "fallback": t.fallback}
            for t in chosen])


# --- stage 5: generation -------------------------------------------------------------------------------------------

def generate_stage(source: SourceDataset, config: DistillConfig, stage: StageDir, text: StageDir,
                   prototypes: StageDir, pipe, classes: list[int], progress: bool) -> None:
    from ..stages.generate import generate_images

    g = config.generation
    for label in _progress(classes, "generate", progress):
        if stage.has(label, ""):
            continue
        protos = torch.load(prototypes.file(label, ".pt"), weights_only=True)
        prompts = [t["prompt"] for t in read_json(text.file(label, ".json"))]
        keys = [(label, cluster) for cluster in range(len(prompts))]
        images = generate_images(pipe, protos["centers"], prompts, seeds=keys, seed=config.seed,
                                 negative_prompt=g.negative_prompt, strength=g.strength,
                                 num_inference_steps=g.num_inference_steps, guidance_scale=g.guidance_scale,
                                 eta=g.eta, batch_size=g.batch_size, output_size=g.output_size,
                                 prompt_chunking=g.prompt_chunking)
        with atomic_path(stage.file(label, "")) as tmp:
            tmp.mkdir()
            for c, image in enumerate(images):
                image.save(tmp / f"{c:04d}.png")


# --- output --------------------------------------------------------------------------------------------------------

def assemble_dataset(source: SourceDataset, config: DistillConfig, stages: dict[str, StageDir], run_dir: Path) -> None:
    """Writes RUN_DIR/dataset (save_to_disk) and RUN_DIR/preview.png from the per-class results."""
    import datasets

    # a local path would leak the user's directory layout into published data: keep only its last part
    source_name = Path(source.source_id).name if Path(source.source_id).exists() else source.source_id
    columns: dict[str, list] = {k: [] for k in ("image", "label", "class_name", "prompt_class_name", "prompt",
                                                "cluster", "cluster_size", "seed", "source_dataset", "source_row",
                                                "text_fallback")}
    for label in source.classes:
        protos = torch.load(stages["prototypes"].file(label, ".pt"), weights_only=True)
        texts = read_json(stages["text"].file(label, ".json"))
        folder = stages["generate"].file(label, "")
        for c, text in enumerate(texts):
            with Image.open(folder / f"{c:04d}.png") as im:
                columns["image"].append(im.convert("RGB"))
            columns["label"].append(label)
            columns["class_name"].append(source.class_names[label])
            columns["prompt_class_name"].append(source.prompt_names[label])
            columns["prompt"].append(text["prompt"])
            columns["cluster"].append(c)
            columns["cluster_size"].append(protos["cluster_sizes"][c])
            columns["seed"].append(config.seed)
            columns["source_dataset"].append(source_name)
            columns["source_row"].append(-1 if text["source_row"] is None else text["source_row"])
            columns["text_fallback"].append(text["fallback"] or "")
    features = datasets.Features({
        "image": datasets.Image(), "label": datasets.ClassLabel(names=source.class_names),
        "class_name": datasets.Value("string"), "prompt_class_name": datasets.Value("string"),
        "prompt": datasets.Value("string"),
        "cluster": datasets.Value("int32"), "cluster_size": datasets.Value("int32"), "seed": datasets.Value("int64"),
        "source_dataset": datasets.Value("string"), "source_row": datasets.Value("int64"),
        "text_fallback": datasets.Value("string")})
    dataset = datasets.Dataset.from_dict(columns, features=features, split="train")
    with atomic_path(run_dir / "dataset") as tmp:
        dataset.save_to_disk(str(tmp))
    with atomic_path(run_dir / "preview.png", ".png") as tmp:
        preview_grid(columns["image"], columns["label"]).save(tmp)


def preview_grid(images: list[Image.Image], labels: list[int], cell: int = 96) -> Image.Image:
    """One row per class, its images left to right."""
    rows: dict[int, list[Image.Image]] = {}
    for image, label in zip(images, labels):
        rows.setdefault(label, []).append(image)
    width = max(len(r) for r in rows.values())
    grid = Image.new("RGB", (width * cell, len(rows) * cell), "white")
    for y, row in enumerate(rows.values()):
        for x, image in enumerate(row):
            grid.paste(image.resize((cell, cell), Image.BICUBIC), (x * cell, y * cell))
    return grid


def _progress(items, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, disable=not enabled, unit="class")


def _free(*models) -> None:
    del models
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()



def cluster_plan(config: DistillConfig, source: SourceDataset) -> dict[int, int]:
    """Prototypes per selected class under a resolved `config` (see `DistillConfig.resolve`); raises (or reduces, as
    `data.too_few_images` says) when a class has fewer inlier images than IPC."""
    from ..stages.prototypes import clusters_per_class

    return clusters_per_class(source.counts(), source.class_names, ipc=config.ipc,
                              contamination=config.prototypes.contamination, too_few=config.data.too_few_images)

def run_fingerprints(config: DistillConfig, source: SourceDataset, cache_dir: str | Path | None = None
                     ) -> dict[str, str]:
    """Each stage's fingerprint for `config` on `source`, as `distill` computes them (reading the VAE's weights). They
    do not depend on which classes are selected (`data.classes`), so a caller that runs a job one class per `distill`
    call (the app) computes them once and passes them to every call (`distill(fingerprints=...)`)."""
    dtype = resolve_dtype(config.dtype, resolve_device(config.device))
    resolved, _ = config.resolve(source.profile)
    tune = finetune_settings(resolved, check_output_dir(config.output), dtype)
    return stage_fingerprints(resolved, source, tune, dtype, cache_dir)


# What each stage leaves per class in its folder (`StageDir.file(label, suffix)`); the generated images: a folder.
RESULT_SUFFIX = {"caption": ".json", "prototypes": ".pt", "text": ".json", "generate": ""}


def missing_classes(run_dir: str | Path, fingerprints: dict[str, str], stages: Sequence[str],
                    classes: Sequence[int]) -> list[int]:
    """The `classes` that some of `stages` has no result for under `fingerprints` (`run_fingerprints`): what a
    resumed `distill` would compute. Reads the run directory only (results under another fingerprint count as
    missing: `distill` deletes them)."""
    current = {}
    for name in (s for s in stages if s in RESULT_SUFFIX):
        folder = work_dir(run_dir, name)
        stored = read_json(folder / "fingerprint.json", default={}).get("fingerprint")
        current[name] = folder if stored == fingerprints[name] else None
    return [label for label in classes
            if any(folder is None or not result_file(folder, label, RESULT_SUFFIX[name]).exists()
                   for name, folder in current.items())]


def distill(config: DistillConfig, *, stages: tuple[str, ...] | None = None, cache_dir: str | Path | None = None,
            progress: bool = False, captioner=None, pipeline=None, processes: Processes | None = None,
            source: SourceDataset | None = None, share_from: Sequence[str | Path] = (),
            fingerprints: dict[str, str] | None = None) -> DistillResult:
    """Runs the VLCP distillation; every stage resumes from what the run directory already holds.

    Args:
        config: the whole job. Settings left None (output size, contamination, text threshold, fine-tuning
            resolution) are derived from the source (`DistillConfig.resolve`); the manifest records them.
        stages: which stages to run, in order ("caption", "finetune", "prototypes", "text", "generate"); None = all,
            plus the output dataset, preview and manifest.
        cache_dir: where tiny models are built (the library never reads environment variables).
        progress: tqdm bars over classes (and fine-tuning steps).
        captioner: an already loaded `vldd.stages.caption.Captioner` (else loaded from `config.caption.model`).
        pipeline: an already loaded img2img pipeline (else loaded from `config.generation.model`, or the model this
            run fine-tuned).
        processes: this process's share of a multi-process run (see `Processes`); None = the only process.
        source: `load_source(config.data)`, already opened (a streamed source is read once and reused across
            calls); None = opened here.
        share_from: other run directories whose stage results are reused wherever their fingerprint equals this
            run's (linked, see `share_stage`): stages whose inputs a variant does not change run once.
        fingerprints: `run_fingerprints(config, source, cache_dir)`, already computed for this job (with any class
            selection); None = computed here, which reads the VAE's weights.
    """
    stages = STAGES if stages is None else tuple(stages)
    bad = [s for s in stages if s not in STAGES]
    if bad:
        raise ValueError(f"unknown stages {bad}; expected some of {list(STAGES)}")
    processes = processes or Processes()
    run_dir = check_output_dir(config.output)  # a clear error when it cannot be created (e.g. under a file)
    timings: dict[str, float] = {}

    # 1. Check everything before touching the run directory: the device and dtype, the source (every class has enough
    #    images for IPC), the settings derived from it, and each stage's inputs (which reads the VAE). A command that
    #    fails here leaves config.yaml, the manifest and every stage's results as they were.
    user_config = config
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    t = time.perf_counter()
    source = source if source is not None else load_source(config.data)
    config, derived = config.resolve(source.profile)
    if source.profile is not None:
        logger.info("%s", source.profile.describe())
    plan = cluster_plan(config, source)
    mine = processes.share(source.classes)
    tune = finetune_settings(config, run_dir, dtype)
    fps = fingerprints if fingerprints is not None else stage_fingerprints(config, source, tune, dtype, cache_dir)
    timings["load"] = time.perf_counter() - t

    # 2. Checked: config.yaml keeps the user's settings (derived ones go to the manifest); opening each stage clears
    #    results whose inputs changed, so a changed setting recomputes that stage and what depends on it, nothing else.
    if processes.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text(run_dir / "config.yaml", user_config.to_yaml())
    dirs = _open_stages(run_dir, config, fps, processes, share_from)
    if processes.is_main and dirs["generate"].cleared and "generate" not in stages:
        # the dataset and preview were made from the deleted images: remove them rather than keep a stale set
        shutil.rmtree(run_dir / "dataset", ignore_errors=True)
        (run_dir / "preview.png").unlink(missing_ok=True)
    record = _execution_record(config, device, dtype, processes.count)

    # 4. Captions: load the captioner once, caption every class not yet done, free it; then the captions dataset.
    if "caption" in stages:
        t = time.perf_counter()
        todo = [label for label in mine if not dirs["caption"].has(label, ".json")]
        _record(dirs["caption"], record, processes, ".json", source.classes)
        if todo and captioner is None and not config.caption.from_hub:
            from ..stages.caption import load_captioner

            captioner = load_captioner(config.caption.model, revision=config.caption.revision, device=device,
                                       dtype=dtype, cache_dir=cache_dir, hub_kernels=config.hub_kernels)
        caption_stage(source, config, dirs["caption"], captioner, mine, progress)
        _free(captioner)
        captioner = None
        processes.wait()
        if processes.is_main:
            _require(source, dirs["caption"], ".json", "captions", "caption", source.classes)
            write_captions_dataset(source, config, dirs["caption"], run_dir)
        processes.wait()
        timings["caption"] = time.perf_counter() - t

    # 5. Fine-tuning (VLCP step 2): one model per run seed, on every process at once; a finished one is reused, a
    #    killed one resumes from its last checkpoint.
    if tune is not None and ("finetune" in stages or "generate" in stages):
        from .finetune import SUMMARY

        t = time.perf_counter()
        if "finetune" not in stages and not (dirs["finetune"].path / SUMMARY).is_file():
            raise ValueError(f"generation needs this run's fine-tuned model ({dirs['finetune'].path} is not finished); "
                             "run `vldd distill`, or generate with the base model (--no-finetune)")
        if processes.is_main and not (dirs["finetune"].path / SUMMARY).is_file():
            dirs["finetune"].record(record["finetune"])
        finetune_stage(config, tune, dirs["finetune"], source, run_dir, processes, cache_dir, progress)
        timings["finetune"] = time.perf_counter() - t

    # 6. Image prototypes, 7. text prototypes, 8. generation: one SD pipeline serves the VAE and the denoising (a
    #    fine-tuned model keeps its base's VAE).
    needs_generate = "generate" in stages and any(not dirs["generate"].has(c, "") for c in mine)
    needs_pipe = needs_generate or ("prototypes" in stages and any(not dirs["prototypes"].has(c, ".pt") for c in mine))
    if needs_pipe and pipeline is None:
        from ..stages.generate import load_pipeline

        t = time.perf_counter()

        g = config.generation
        model, revision, lora = _diffusion_model(config, tune, dirs, for_generation=needs_generate)
        pipeline = load_pipeline(model, revision=revision, device=device, dtype=dtype, scheduler=g.scheduler,
                                 lora=lora, cache_dir=cache_dir, compile_unet=g.compile and needs_generate,
                                 hub_kernels=config.hub_kernels)
        timings["pipeline"] = time.perf_counter() - t  # loading the SD pipeline (prototypes and generation share it)
    if "prototypes" in stages:
        t = time.perf_counter()
        _record(dirs["prototypes"], record, processes, ".pt", source.classes)
        prototype_stage(source, config, dirs["prototypes"], pipeline.vae if needs_pipe else None, plan, mine,
                        progress)
        timings["prototypes"] = time.perf_counter() - t
    if "text" in stages:
        t = time.perf_counter()
        _require(source, dirs["caption"], ".json", "captions", "caption", mine)
        _require(source, dirs["prototypes"], ".pt", "image prototypes", "prototypes", mine)
        _record(dirs["text"], record, processes, ".json", source.classes)
        text_stage(source, config, dirs["text"], dirs["caption"], dirs["prototypes"], mine)
        timings["text"] = time.perf_counter() - t
    if "generate" in stages:
        t = time.perf_counter()
        _require(source, dirs["text"], ".json", "text prototypes", "text", mine)
        _record(dirs["generate"], record, processes, "", source.classes)
        generate_stage(source, config, dirs["generate"], dirs["text"], dirs["prototypes"], pipeline, mine, progress)
        timings["generate"] = time.perf_counter() - t

    # 9. Once every process is done: the main process writes the dataset, preview and manifest.
    processes.wait()
    if processes.is_main:
        t = time.perf_counter()
        if "generate" in stages:
            _require(source, dirs["generate"], "", "generated images", "generate", source.classes)
            assemble_dataset(source, config, dirs, run_dir)
        timings["output"] = time.perf_counter() - t
        _manifest(run_dir, config, derived, tune, source, stages, timings, dirs, dtype, device,
                  processes.count)
    processes.wait()
    dataset = None
    if "generate" in stages:
        import datasets

        dataset = datasets.load_from_disk(str(run_dir / "dataset"))
    return DistillResult(run_dir, dataset, read_json(run_dir / "manifest.json", default={}))


def _diffusion_model(config: DistillConfig, tune: FinetuneConfig | None, dirs: dict[str, StageDir], for_generation: bool
                     ) -> tuple[str, str | None, str | None]:
    """(model, revision, LoRA) of the pipeline to load: the run's fine-tuned model for generation, else the base."""
    g = config.generation
    if tune is None:
        return g.model, g.revision, g.lora
    if for_generation and tune.lora:
        return tune.base_model, tune.revision, str(dirs["finetune"].path)
    if for_generation:
        return str(dirs["finetune"].path), None, None
    return tune.base_model, tune.revision, None  # its VAE is the fine-tuned model's


# Fine-tuning settings that change no weight: where things go, how often to checkpoint, how to load data.
_FINETUNE_UNFINGERPRINTED = {"captions", "output", "checkpointing_steps", "checkpoints_total_limit", "resume",
                             "dataloader_num_workers", "push_to_hub", "private", "hub_kernels"}


def share_stage(stage: StageDir, donor: Path) -> int:
    """Hard-links (else copies) into `stage` the results another run directory holds at `donor` for the same
    fingerprint, so that a stage whose inputs are unchanged is computed once across runs (e.g. the variants of an
    ablation). Only what `stage` lacks is taken, one entry at a time and atomically; a fine-tuned model is taken
    whole when `donor` finished it and `stage` did not. Results are never modified in place (every write replaces
    a file), so linked files stay correct in both runs. Returns how many entries were taken.
    """
    from .finetune import SUMMARY

    stored = read_json(donor / "fingerprint.json", default={}).get("fingerprint")
    if stored != stage.fingerprint or donor.resolve() == stage.path.resolve():
        return 0
    if stage.name == "finetune":
        if (stage.path / SUMMARY).is_file() or not (donor / SUMMARY).is_file():
            return 0
        with atomic_path(stage.path) as tmp:
            shutil.copytree(donor, tmp, copy_function=_link_or_copy)
        stage.computed_with = read_json(stage.path / "fingerprint.json", default={}).get("computed_with", [])
        return 1
    taken = 0
    for entry in sorted(donor.iterdir()):
        target = stage.path / entry.name
        if entry.name.startswith(".") or target.exists():
            continue
        with atomic_path(target, "".join(entry.suffixes)) as tmp:
            if entry.is_dir():
                shutil.copytree(entry, tmp, copy_function=_link_or_copy)
            else:
                _link_or_copy(entry, tmp)
        taken += 1
    if taken:
        logger.info("stage %r: reused %d result(s) of %s (same fingerprint %s)", stage.name, taken, donor,
                    stage.fingerprint)
        for settings in read_json(donor / "fingerprint.json", default={}).get("computed_with", []):
            stage.record(settings)  # what computed the results taken
    return taken


def _link_or_copy(src, dst) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(src, dst)


# Settings that are in no stage's fingerprint although they may change the last bits of a result (where it ran, how
# it was batched or checkpointed): the manifest records, per stage, the values of every command that computed some of the
# stage's results (`stages.<name>.computed_with`), next to the device, dtype and process count.
RECORDED_SETTINGS = {"caption": (), "finetune": ("finetune.checkpointing_steps",), "prototypes": (), "text": (),
                     "generate": ("generation.batch_size",)}
# Settings that choose what the run holds or where, or what it accepts, not how a result is computed: the run
# directory itself, which classes the dataset holds (the manifest's source.classes), and whether numeric class names
# are accepted (the names used are in the caption fingerprint). `device` is recorded per stage (above); every other
# setting is in the fingerprint of each stage it changes (the preset through the fine-tuning recipe it selects).
UNFINGERPRINTED = {"output", "device", "data.classes", "data.numeric_names"} | {s for names in RECORDED_SETTINGS.values()
                                                                       for s in names}


def stage_fingerprints(config: DistillConfig, source: SourceDataset, tune: FinetuneConfig | None, dtype,
                       cache_dir) -> dict[str, str]:
    """Each stage's fingerprint: every setting and upstream result its results depend on (see `UNFINGERPRINTED`).

    Args:
        config: the run, resolved (`DistillConfig.resolve`).
        source: the opened source (its revision and the names the prompts use).
        tune: the fine-tuning stage's settings (`vldd.jobs.finetune.finetune_settings`); None = no fine-tuning.
        dtype: the resolved torch dtype the models run in (captioner, VAE, UNet).
        cache_dir: where tiny models are built (the VAE is fingerprinted by its weights).
    """
    data_key = fingerprint(config.data.dataset, config.data.config_name, config.data.split, config.data.revision,
                           source.revision, config.data.max_images_per_class, config.data.image_column,
                           config.data.label_column)
    dtype_name = str(dtype).replace("torch.", "")
    fp: dict[str, str] = {}
    names = [source.prompt_names] if source.prompt_names != source.class_names else []  # the prompts name them
    # Hub kernels may change results' last bits (as torch.compile does): named only when on, so the fingerprints of
    # runs made before the option existed still match. They reach the fine-tuning through the captions' fingerprint.
    kernels = ["hub_kernels"] if config.hub_kernels else []
    # the captioner runs in the run's dtype: fp16 captions differ from fp32 ones (published captions do not)
    fp["caption"] = fingerprint(data_key, config.caption, config.seed, *names,
                                *([] if config.caption.from_hub else [dtype_name]), *kernels)
    if tune is not None:
        fp["finetune"] = fingerprint(fp["caption"], {k: v for k, v in tune.to_dict().items()
                                                     if k not in _FINETUNE_UNFINGERPRINTED})
    # The VAE (config and weights), not the model id: fine-tuning changes only the UNet, so prototypes are kept.
    vae_model = (tune.base_model, tune.revision) if tune is not None else (config.generation.model,
                                                                            config.generation.revision)
    fp["prototypes"] = fingerprint(data_key, config.prototypes, config.ipc, config.data.too_few_images, config.seed,
                                   vae_fingerprint(*vae_model, cache_dir=cache_dir), dtype_name)
    # `text.mode` at its default is left out, so runs made before the setting existed keep their fingerprints
    text = {k: v for k, v in vars(config.text).items() if (k, v) != ("mode", "prototypes")}
    fp["text"] = fingerprint(fp["caption"], fp["prototypes"], text)
    gen = {k: v for k, v in vars(config.generation).items() if k != "batch_size"}  # batching changes no result
    fp["generate"] = fingerprint(fp["text"], gen, config.seed, fp.get("finetune"), dtype_name, *kernels)
    return fp


def _open_stages(run_dir: Path, config: DistillConfig, fps: dict[str, str], processes: Processes,
                 share_from: Sequence[str | Path] = ()) -> dict[str, StageDir]:
    paths = {"finetune": run_dir / "finetune" / f"seed{config.seed}"}
    dirs = {}
    if processes.is_main:  # only the main process may clear a stale stage
        dirs = {name: StageDir(run_dir, name, fps[name], paths.get(name)) for name in fps}
        for stage in dirs.values():
            for donor in share_from:
                share_stage(stage, Path(donor) / stage.path.relative_to(run_dir))
    processes.wait()
    return dirs or {name: StageDir(run_dir, name, fps[name], paths.get(name)) for name in fps}


def _execution_record(config: DistillConfig, device, dtype, n_processes: int) -> dict[str, dict[str, Any]]:
    """Per stage, the settings this command computes its results with that the stage's fingerprint leaves out."""
    common = {"device": torch.device(device).type, "dtype": str(dtype).replace("torch.", ""),
              "processes": n_processes}
    record = {}
    for stage, names in RECORDED_SETTINGS.items():
        record[stage] = dict(common)
        for dotted in names:
            section, name = dotted.split(".")
            record[stage][dotted] = getattr(getattr(config, section), name)
    return record


def _record(stage: StageDir, record: dict[str, dict[str, Any]], processes: Processes, suffix: str,
            classes: list[int]) -> None:
    """Before a stage computes anything: adds this command's settings to the stage's record (main process)."""
    if processes.is_main and any(not stage.has(c, suffix) for c in classes):
        stage.record(record[stage.name])


def _require(source: SourceDataset, stage: StageDir, suffix: str, what: str, name: str, classes: list[int]) -> None:
    """Raises when stage `name` has no result for some of `classes`, naming the command that makes them."""
    missing = [source.class_names[c] for c in classes if not stage.has(c, suffix)]
    if missing:
        command = next(c for c, stages in STAGE_COMMANDS.items() if name in stages)
        raise ValueError(f"{what} are missing for classes {missing[:10]}; run `vldd {command}` on this run directory "
                         "first")


def _source_record(config: DistillConfig, source: SourceDataset) -> dict[str, Any]:
    license_ = getattr(getattr(source.dataset, "info", None), "license", None) or None
    return {"dataset": config.data.dataset, "config_name": config.data.config_name, "split": config.data.split,
            "revision": resolve_revision(config.data.dataset, config.data.revision, "dataset") if
            config.data.dataset != "sample" else None,
            "fingerprint": source.revision, "class_names": source.class_names, "classes": source.classes,
            "prompt_class_names": source.prompt_names,
            "class_name_rule": source.resolved_names.rule if source.resolved_names else "labels",
            "class_names_from": source.resolved_names.origin if source.resolved_names else "the source's labels",
            "license": license_ if license_ else ("mit" if config.data.dataset == "sample" else None),
            "image_column": source.image_column, "label_column": source.label_column}


def _finetune_record(config: DistillConfig, tune: FinetuneConfig | None, dirs: dict[str, StageDir]) -> dict[str, Any]:
    """Whether and which fine-tuned model generated the images, for the manifest (and, through it, the card)."""
    from .finetune import SUMMARY

    if tune is None:  # notes name no model: a local path must not reach a published card
        note = NOT_FINETUNED if not config.finetune.enabled else (
            "not fine-tuned by this run: the diffusion model given (generation.model / lora) is used as is")
        return {"used": False, "note": note}
    summary = read_json(dirs["finetune"].path / SUMMARY)
    if summary is None:
        return {"used": False, "note": "not fine-tuned yet (the fine-tuning stage has not finished)"}
    model = f"finetune/seed{config.seed}"
    kind = "LoRA adapter on" if tune.lora else "full fine-tune of"
    return {"used": True, "model": model, "kind": summary["kind"], "base_model": public_name(tune.base_model),
            "base_revision": resolve_revision(tune.base_model, tune.revision), "seed": tune.seed,
            "resolution": tune.resolution, "global_step": summary["global_step"], "epochs": summary["epochs"],
            "final_loss": summary["final_loss"], "note": f"{model} ({kind} {public_name(tune.base_model)}, "
            f"{summary['global_step']} steps at {tune.resolution} px, seed {tune.seed})"}


def _manifest(run_dir, config, derived, tune, source, stages, timings, dirs, dtype, device,
              n_processes) -> dict:
    previous = read_json(run_dir / "manifest.json", default={})
    counts: dict[str, Any] = {"classes": len(source.classes), "images_per_class": {}, "skipped_per_class": {},
                              "outliers_per_class": {}, "cluster_sizes": {}, "text_fallbacks": 0}
    for label in source.classes:
        name = source.class_names[label]
        counts["images_per_class"][name] = len(source.indices[label])
        if dirs["prototypes"].has(label, ".pt"):
            p = torch.load(dirs["prototypes"].file(label, ".pt"), weights_only=True)
            counts["skipped_per_class"][name] = p["skipped"]
            counts["outliers_per_class"][name] = sum(1 for a in p["assignment"] if a < 0)
            counts["cluster_sizes"][name] = p["cluster_sizes"]
        if dirs["text"].has(label, ".json"):
            counts["text_fallbacks"] += sum(1 for t in read_json(dirs["text"].file(label, ".json")) if t["fallback"])
    finetuned = _finetune_record(config, tune, dirs)
    ran = {s for s in stages if s != "finetune" or tune is not None}  # a run that does not fine-tune skips it
    cleared = {name for name, d in dirs.items() if d.cleared}  # a changed setting deleted these stages' results
    done = sorted((set(previous.get("stages_done", [])) - cleared) | ran, key=STAGES.index)
    return update_manifest(
        run_dir,
        vldd_version=__version__,
        config=config.to_dict(),  # the values used; config.yaml keeps the user's (None = derived)
        derived=derived,
        source=_source_record(config, source),
        models={"captioner": {"id": config.caption.from_hub or config.caption.model,
                              "revision": resolve_revision(config.caption.model, config.caption.revision)},
                "diffusion": {"id": config.generation.model,
                              "revision": resolve_revision(config.generation.model, config.generation.revision)},
                "lora": {"id": config.generation.lora, "revision": None} if config.generation.lora else None,
                "fine-tuning": {"id": finetuned["note"], "revision": None}},
        finetune=finetuned,
        tiny=config.is_tiny,
        note=TINY_NOTE if config.is_tiny else None,
        versions=versions(),
        seeds={"run": config.seed, "scheme": "vldd.core.seeding.derive_seed(seed, stream, *keys)",
               "streams": {"caption": "(CAPTION, class) then the batch's first image", "vae_sample": "(VAE_SAMPLE, row)",
                           "kmeans": "(KMEANS, class)", "image": "(IMAGE, class, cluster)"}},
        device=str(device), dtype=str(dtype).replace("torch.", ""), processes=n_processes,
        timings={**previous.get("timings", {}), **{k: round(v, 3) for k, v in timings.items()}},
        counts=counts,
        fingerprints={name: d.fingerprint for name, d in dirs.items()},
        # per stage, the settings outside its fingerprint that computed its results (`RECORDED_SETTINGS`): the
        # `config` above is the last command's, which may have reused results computed with other values of these
        stages={name: {"fingerprint": d.fingerprint, "computed_with": d.computed_with} for name, d in dirs.items()},
        stages_done=done,
    )
