"""The orchestrator: one call runs the VLCP distillation end to end, resumably, one class at a time.

Example:
    >>> from vldd.config import load_config
    >>> result = distill(load_config(overrides={"preset": "tiny", "output": "runs/tiny"}))
    >>> result.dataset
"""

from __future__ import annotations

import gc
import logging
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from . import __version__
from .config import DistillConfig, fingerprint
from .data import SourceDataset, load_source
from .runs import StageDir, atomic_path, read_json, update_manifest, write_json, write_text

logger = logging.getLogger(__name__)

STAGES = ("caption", "prototypes", "text", "generate")
TINY_NOTE = ("tiny preset: random-weight models built from configs; the images are noise and the captions "
             "gibberish. It exercises the whole product offline in seconds; it is not a distilled dataset.")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class DistillResult:
    """What a run produced."""

    run_dir: Path
    dataset: Any = None  # the distilled `datasets.Dataset`, when the generate stage ran
    manifest: dict = field(default_factory=dict)

    def summary_lines(self) -> list[str]:
        lines = []
        if self.manifest.get("tiny"):
            lines.append(f"NOTE: {TINY_NOTE}")
        if self.dataset is not None:
            lines.append(f"distilled {self.dataset.num_rows} images ({len(self.manifest['source']['classes'])} "
                         f"classes x IPC {self.manifest['config']['ipc']}) -> {self.run_dir / 'dataset'}")
            lines.append(f"preview: {self.run_dir / 'preview.png'}; manifest: {self.run_dir / 'manifest.json'}")
        else:
            lines.append(f"stages done: {', '.join(self.manifest.get('stages_done', []))} in {self.run_dir}")
        return lines


@dataclass
class Processes:
    """This process's place among the processes sharing a run (one per GPU under `accelerate launch`).

    Classes are dealt out round-robin (`classes[index::count]`); every seed depends on the class, never on the
    process, so the result is the same whatever the process count.
    """

    index: int = 0  # this process's rank
    count: int = 1  # number of processes
    wait: Callable[[], None] = lambda: None  # barrier: returns once every process has reached it

    @property
    def is_main(self) -> bool:
        return self.index == 0

    @classmethod
    def from_accelerate(cls, state) -> Processes:
        """From an `accelerate.PartialState`."""
        return cls(state.process_index, state.num_processes, state.wait_for_everyone)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but CUDA is not available; use --device cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return DTYPES[dtype]


def resolve_revision(model_id: str, revision: str | None, repo_type: str = "model") -> str | None:
    """The commit a Hub id resolved to, read from the local Hub cache (no network); None for local paths."""
    import re

    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    if revision and re.fullmatch(r"[0-9a-f]{40}", revision):
        return revision
    if model_id.startswith("tiny://") or Path(model_id).exists():
        return None
    ref = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=model_id, repo_type=repo_type) / "refs" / (
        revision or "main")
    return ref.read_text().strip() if ref.is_file() else revision


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"vldd": __version__, "python": platform.python_version()}
    for name in ("torch", "diffusers", "transformers", "datasets", "huggingface_hub", "accelerate", "scikit-learn",
                 "numpy", "nltk"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def _classes_to_run(source: SourceDataset, config: DistillConfig) -> dict[int, int]:
    """Number of prototypes per class; raises (or reduces, as configured) when a class has too few images."""
    from .prototypes import count_inliers

    plan, short = {}, []
    for label, n in source.counts().items():
        usable = count_inliers(n, config.prototypes.contamination)
        if usable >= config.ipc:
            plan[label] = config.ipc
        else:
            short.append(f"{source.class_names[label]!r} ({n} images, {usable} after outlier removal)")
            plan[label] = usable
    if short and config.data.too_few_images == "error":
        raise ValueError(f"IPC {config.ipc} needs at least {config.ipc} inlier images per class; too few in: "
                         f"{', '.join(short)}. Lower --ipc, add images, or set data.too_few_images=reduce")
    for line in short:
        logger.warning("class %s: fewer clusters than IPC %d", line, config.ipc)
    empty = [source.class_names[label] for label, k in plan.items() if k < 1]
    if empty:
        raise ValueError(f"classes {empty} have no usable image")
    return plan


# --- stage 1: captions -------------------------------------------------------------------------------------------

def caption_stage(source: SourceDataset, config: DistillConfig, stage: StageDir, captioner, classes: list[int],
                  progress: bool) -> None:
    from .captioning import build_prompt, caption_images

    published = None
    if config.caption.from_hub:
        from .hub import load_published_captions

        published = load_published_captions(config.caption.from_hub, class_names=source.class_names)
        published = dict(zip(published["source_index"], published["caption"]))
    for label in _progress(classes, "captions", progress):
        if stage.has(label, ".json"):
            continue
        images, rows, skipped = source.load_class(label)
        class_name = source.class_names[label]
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
                                      batch_size=c.batch_size, seed=config.seed * 1_000_003 + label)
        write_json(stage.file(label, ".json"), {"rows": rows, "captions": captions, "prompt": prompt,
                                                "skipped": skipped})
        del images  # before the next class loads: one class in memory at a time, not two


def write_captions_dataset(source: SourceDataset, config: DistillConfig, stage: StageDir, run_dir: Path) -> int:
    from .captioning import captions_dataset

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


# --- stage 2: image prototypes -------------------------------------------------------------------------------------

def prototype_stage(source: SourceDataset, config: DistillConfig, stage: StageDir, vae, plan: dict[int, int],
                    classes: list[int], progress: bool) -> None:
    from .prototypes import build_prototypes, count_inliers, encode_images

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
                                  n_init=p.n_init, max_iter=p.max_iter, tol=p.tol, seed=config.seed)
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


# --- stage 3: text prototypes --------------------------------------------------------------------------------------

def text_stage(source: SourceDataset, config: DistillConfig, stage: StageDir, captions: StageDir,
               prototypes: StageDir, classes: list[int]) -> None:
    from .text_prototypes import select_text_prototypes

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
        chosen = select_text_prototypes(descriptions, protos["assignment"], source.class_names[label],
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


# --- stage 4: generation -------------------------------------------------------------------------------------------

def generate_stage(source: SourceDataset, config: DistillConfig, stage: StageDir, text: StageDir,
                   prototypes: StageDir, pipe, classes: list[int], progress: bool) -> None:
    from .generation import generate_images

    g = config.generation
    for label in _progress(classes, "generate", progress):
        if stage.has(label, ""):
            continue
        protos = torch.load(prototypes.file(label, ".pt"), weights_only=True)
        prompts = [t["prompt"] for t in read_json(text.file(label, ".json"))]
        keys = [label * 100_000 + c for c in range(len(prompts))]
        images = generate_images(pipe, protos["centers"], prompts, seeds=keys, seed=config.seed,
                                 negative_prompt=g.negative_prompt, strength=g.strength,
                                 num_inference_steps=g.num_inference_steps, guidance_scale=g.guidance_scale,
                                 eta=g.eta, batch_size=g.batch_size, output_size=g.output_size)
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
    columns: dict[str, list] = {k: [] for k in ("image", "label", "class_name", "prompt", "cluster", "cluster_size",
                                                "seed", "source_dataset", "source_row", "text_fallback")}
    for label in source.classes:
        protos = torch.load(stages["prototypes"].file(label, ".pt"), weights_only=True)
        texts = read_json(stages["text"].file(label, ".json"))
        folder = stages["generate"].file(label, "")
        for c, text in enumerate(texts):
            with Image.open(folder / f"{c:04d}.png") as im:
                columns["image"].append(im.convert("RGB"))
            columns["label"].append(label)
            columns["class_name"].append(source.class_names[label])
            columns["prompt"].append(text["prompt"])
            columns["cluster"].append(c)
            columns["cluster_size"].append(protos["cluster_sizes"][c])
            columns["seed"].append(config.seed)
            columns["source_dataset"].append(source_name)
            columns["source_row"].append(-1 if text["source_row"] is None else text["source_row"])
            columns["text_fallback"].append(text["fallback"] or "")
    features = datasets.Features({
        "image": datasets.Image(), "label": datasets.ClassLabel(names=source.class_names),
        "class_name": datasets.Value("string"), "prompt": datasets.Value("string"),
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


def distill(config: DistillConfig, *, stages: tuple[str, ...] | None = None, cache_dir: str | Path | None = None,
            progress: bool = False, captioner=None, pipeline=None, processes: Processes | None = None,
            source: SourceDataset | None = None) -> DistillResult:
    """Runs the VLCP distillation; every stage resumes from what the run directory already holds.

    Args:
        config: the whole job.
        stages: which stages to run, in order ("caption", "prototypes", "text", "generate"); None = all, plus the
            output dataset, preview and manifest.
        cache_dir: where tiny models are built (the library never reads environment variables).
        progress: tqdm bars over classes.
        captioner: an already loaded `vldd.captioning.Captioner` (else loaded from `config.caption.model`).
        pipeline: an already loaded img2img pipeline (else loaded from `config.generation.model`).
        processes: this process's share of a multi-process run (see `Processes`); None = the only process.
        source: `load_source(config.data)`, already opened (a streamed source is read once and reused across
            calls); None = opened here.
    """
    stages = STAGES if stages is None else tuple(stages)
    bad = [s for s in stages if s not in STAGES]
    if bad:
        raise ValueError(f"unknown stages {bad}; expected some of {list(STAGES)}")
    processes = processes or Processes()
    run_dir = Path(config.output)
    timings: dict[str, float] = {}

    # 1. Prepare the run directory.
    if processes.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text(run_dir / "config.yaml", config.to_yaml())

    # 2. Load the source dataset, check every class has enough images for IPC, and take this process's share.
    t = time.perf_counter()
    source = source if source is not None else load_source(config.data)
    plan = _classes_to_run(source, config)
    mine = source.classes[processes.index::processes.count]
    timings["load"] = time.perf_counter() - t

    # 3. Name each stage's inputs: a changed setting recomputes that stage and what depends on it, nothing else.
    dirs = _stage_dirs(run_dir, config, source, processes)
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)

    # 4. Captions: load the captioner once, caption every class not yet done, free it.
    if "caption" in stages:
        t = time.perf_counter()
        todo = [label for label in mine if not dirs["caption"].has(label, ".json")]
        if todo and captioner is None and not config.caption.from_hub:
            from .captioning import load_captioner

            captioner = load_captioner(config.caption.model, revision=config.caption.revision, device=device,
                                       dtype=dtype, cache_dir=cache_dir)
        caption_stage(source, config, dirs["caption"], captioner, mine, progress)
        _free(captioner)
        captioner = None
        timings["caption"] = time.perf_counter() - t

    # 5. Image prototypes, 6. text prototypes, 7. generation: one SD pipeline serves the VAE and the denoising.
    needs_pipe = ("prototypes" in stages and any(not dirs["prototypes"].has(c, ".pt") for c in mine)) or (
        "generate" in stages and any(not dirs["generate"].has(c, "") for c in mine))
    if needs_pipe and pipeline is None:
        from .generation import load_pipeline

        g = config.generation
        pipeline = load_pipeline(g.model, revision=g.revision, device=device, dtype=dtype, scheduler=g.scheduler,
                                 lora=g.lora, cache_dir=cache_dir)
    if "prototypes" in stages:
        t = time.perf_counter()
        prototype_stage(source, config, dirs["prototypes"], pipeline.vae if needs_pipe else None, plan, mine,
                        progress)
        timings["prototypes"] = time.perf_counter() - t
    if "text" in stages:
        t = time.perf_counter()
        _require(source, dirs["caption"], ".json", "captions", "vldd caption", mine)
        _require(source, dirs["prototypes"], ".pt", "image prototypes", "vldd prototypes", mine)
        text_stage(source, config, dirs["text"], dirs["caption"], dirs["prototypes"], mine)
        timings["text"] = time.perf_counter() - t
    if "generate" in stages:
        t = time.perf_counter()
        _require(source, dirs["text"], ".json", "text prototypes", "vldd prototypes", mine)
        generate_stage(source, config, dirs["generate"], dirs["text"], dirs["prototypes"], pipeline, mine, progress)
        timings["generate"] = time.perf_counter() - t

    # 8. Once every process is done: the main process writes the captions, the dataset, preview and manifest.
    processes.wait()
    if processes.is_main:
        t = time.perf_counter()
        if "caption" in stages:
            _require(source, dirs["caption"], ".json", "captions", "vldd caption", source.classes)
            write_captions_dataset(source, config, dirs["caption"], run_dir)
        if "generate" in stages:
            _require(source, dirs["generate"], "", "generated images", "vldd generate", source.classes)
            assemble_dataset(source, config, dirs, run_dir)
        timings["output"] = time.perf_counter() - t
        _manifest(run_dir, config, source, stages, timings, dirs, dtype, device, processes.count)
    processes.wait()
    dataset = None
    if "generate" in stages:
        import datasets

        dataset = datasets.load_from_disk(str(run_dir / "dataset"))
    return DistillResult(run_dir, dataset, read_json(run_dir / "manifest.json", default={}))


def _stage_dirs(run_dir: Path, config: DistillConfig, source: SourceDataset, processes: Processes
                ) -> dict[str, StageDir]:
    data_key = fingerprint(config.data.dataset, config.data.config_name, config.data.split, config.data.revision,
                           source.revision, config.data.max_images_per_class, config.data.image_column,
                           config.data.label_column)
    fp: dict[str, str] = {}
    fp["caption"] = fingerprint(data_key, config.caption, config.seed)
    fp["prototypes"] = fingerprint(data_key, config.prototypes, config.ipc, config.data.too_few_images, config.seed,
                                   config.generation.model, config.generation.revision)
    fp["text"] = fingerprint(fp["caption"], fp["prototypes"], config.text)
    gen = {k: v for k, v in vars(config.generation).items() if k != "batch_size"}  # batching changes no result
    fp["generate"] = fingerprint(fp["text"], gen, config.seed)
    dirs = {}
    if processes.is_main:  # only the main process may clear a stale stage
        dirs = {name: StageDir(run_dir, name, fp[name]) for name in STAGES}
    processes.wait()
    return dirs or {name: StageDir(run_dir, name, fp[name]) for name in STAGES}


def _require(source: SourceDataset, stage: StageDir, suffix: str, what: str, command: str, classes: list[int]
             ) -> None:
    missing = [source.class_names[c] for c in classes if not stage.has(c, suffix)]
    if missing:
        raise ValueError(f"{what} are missing for classes {missing[:10]}; run `{command}` on this run directory first")


def _manifest(run_dir, config, source, stages, timings, dirs, dtype, device, n_processes) -> dict:
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
    license_ = getattr(getattr(source.dataset, "info", None), "license", None) or None
    done = sorted(set(previous.get("stages_done", [])) | set(stages), key=STAGES.index)
    return update_manifest(
        run_dir,
        vldd_version=__version__,
        config=config.to_dict(),
        source={"dataset": config.data.dataset, "config_name": config.data.config_name, "split": config.data.split,
                "revision": resolve_revision(config.data.dataset, config.data.revision, "dataset") if
                config.data.dataset != "sample" else None,
                "fingerprint": source.revision, "class_names": source.class_names, "classes": source.classes,
                "license": license_ if license_ else ("mit" if config.data.dataset == "sample" else None),
                "image_column": source.image_column, "label_column": source.label_column},
        models={"captioner": {"id": config.caption.from_hub or config.caption.model,
                              "revision": resolve_revision(config.caption.model, config.caption.revision)},
                "diffusion": {"id": config.generation.model,
                              "revision": resolve_revision(config.generation.model, config.generation.revision)},
                "lora": {"id": config.generation.lora, "revision": None} if config.generation.lora else None},
        tiny=config.is_tiny,
        note=TINY_NOTE if config.is_tiny else None,
        versions=_versions(),
        seeds={"run": config.seed, "image_generator": "seed * 1000003 + (label * 100000 + cluster)",
               "vae_sample": "seed * 1000003 + source row"},
        device=str(device), dtype=str(dtype).replace("torch.", ""), processes=n_processes,
        timings={**previous.get("timings", {}), **{k: round(v, 3) for k, v in timings.items()}},
        counts=counts,
        fingerprints={name: d.fingerprint for name, d in dirs.items()},
        stages_done=done,
    )
