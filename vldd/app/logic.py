"""What the Gradio app (app.py) does, as plain functions: plain values in, plain values out, no Gradio here.

app.py only composes the tabs and wires their events to these functions; everything here is testable without a
browser or a server.

Example:
    >>> space = load_space_config("spaces_config.yaml")
    >>> request = make_request(space, dataset="sample", classes=["circle", "square"], preset="tiny", ipc=2)
    >>> config = distill_config(request, space, run_dir="/tmp/run")
    >>> source = open_source(config)
"""

from __future__ import annotations

import base64
import contextlib
import csv
import dataclasses
import hashlib
import html
import io
import logging
import math
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..configs.base import check, merge
from ..configs.distill import PRESETS, DistillConfig, from_dict
from ..core.runs import read_json, write_text
from .gpu import ClassJob, ClassResult, GpuQuota, LimitError
from .uploads import UploadError, UploadLimits, apply_pil_limits, extract_upload  # noqa: F401  (for app.py)

logger = logging.getLogger(__name__)

GRADIO_MOCK_TOKEN = "mock-oauth-token-for-local-dev"  # what Gradio's mocked (off-Space) login hands to handlers


# --- the Space's settings (spaces_config.yaml) -----------------------------------------------------------------------

def stages_of(button: str) -> tuple[str, ...]:
    """The stages a tab's button runs, as the CLI's command of that name (the app never fine-tunes: skipped)."""
    from ..jobs.distill import STAGE_COMMANDS

    return STAGE_COMMANDS[button]


@dataclass
class PresetSpec:
    name: str
    label: str  # shown in the Preset menu
    base: str  # a vldd preset (vldd.configs.distill.PRESETS)
    overrides: dict[str, Any] = field(default_factory=dict)  # nested DistillConfig values applied on top of `base`
    gpu_seconds: dict[str, float] = field(default_factory=dict)  # load, caption, encode, step (see the YAML)
    zerogpu: bool = True  # offered on ZeroGPU (its models are then loaded at start-up)

    def config(self) -> DistillConfig:
        """The preset's run config before the visitor's choices."""
        return from_dict(merge(self.overrides, {"preset": self.base}))


@dataclass
class Limits:
    max_classes: int = 10
    max_ipc: int = 10
    max_images_per_class: int = 50
    max_steps: int = 100
    max_upload_mb: int = 200  # an uploaded zip, and what its images unpack to
    max_upload_entries: int = 10_000  # entries in an uploaded zip
    max_image_pixels: int = 40_000_000  # one uploaded image (width x height), checked before it is decoded
    max_image_side: int = 1024  # uploaded images are downscaled to this longer side as they are extracted
    max_image_mb: int = 64  # one image file in an uploaded zip, as unpacked
    max_caption_rows: int = 20

    def uploads(self) -> UploadLimits:
        return UploadLimits(self.max_upload_mb * 2**20, self.max_upload_entries, self.max_image_pixels,
                            self.max_image_side, self.max_image_mb * 2**20)


@dataclass
class SpaceConfig:
    """spaces_config.yaml, validated."""

    space: dict[str, Any]
    presets: dict[str, PresetSpec]
    default_preset: dict[str, str]
    defaults: dict[str, Any]
    limits: Limits
    queue: dict[str, Any]
    evaluation: dict[str, Any]
    sessions: dict[str, float]
    zerogpu: GpuQuota = field(default_factory=GpuQuota)
    local_gpu: dict[str, float] = field(default_factory=dict)

    def preset_for(self, has_gpu: bool) -> str:
        return self.default_preset["gpu" if has_gpu else "cpu"]

    def offered(self, zero_gpu: bool) -> dict[str, PresetSpec]:
        """The presets the menu offers: on ZeroGPU only those whose models are loaded at start-up."""
        return {name: p for name, p in self.presets.items() if p.zerogpu or not zero_gpu}

    def concurrency(self, zero_gpu: bool) -> dict[str, int]:
        """`gpu_concurrency` and `cpu_concurrency` for the runtime: ZeroGPU gives each call its own GPU."""
        return dict(self.queue["zerogpu" if zero_gpu else "local"])

    def controls(self, preset: str) -> dict[str, Any]:
        """Initial values of the run controls: the preset's `DistillConfig` defaults, then the Space's `defaults`."""
        config = self.presets[preset].config()
        g = config.generation
        values = {"ipc": config.ipc, "seed": config.seed, "strength": g.strength, "guidance_scale": g.guidance_scale,
                  "steps": g.num_inference_steps, "images_per_class": self.limits.max_images_per_class}
        return {**values, **{k: v for k, v in self.defaults.items() if k in values}}


def load_space_config(path: str | Path, overrides: dict[str, Any] | None = None) -> SpaceConfig:
    """Reads spaces_config.yaml; `overrides` (nested, same layout) win over the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"app settings file {str(path)!r} does not exist")
    raw = yaml.safe_load(path.read_text()) or {}
    if overrides:
        raw = merge(raw, overrides)
    presets = {}
    for name, spec in (raw.get("presets") or {}).items():
        check(spec.get("base") in PRESETS, f"preset {name!r}: `base` must be one of {sorted(PRESETS)}, got "
                                            f"{spec.get('base')!r}")
        presets[name] = PresetSpec(name, spec.get("label", name), spec["base"], spec.get("overrides") or {},
                                   spec.get("gpu_seconds") or {}, bool(spec.get("zerogpu", True)))
        # The app runs per-class GPU calls; VLCP's fine-tuning trains on every class at once and cannot run there.
        check(not presets[name].config().finetune.enabled,
               f"preset {name!r}: the app does not fine-tune Stable Diffusion; set `overrides: {{finetune: "
               "{enabled: false}}` (a model fine-tuned by `vldd distill` can be given as `generation.model`)")
    check(bool(presets), f"{str(path)!r} must offer at least one preset under `presets`")
    default_preset = raw.get("default_preset") or {}
    for kind in ("gpu", "cpu"):
        check(default_preset.get(kind) in presets,
               f"`default_preset.{kind}` must be one of {sorted(presets)}, got {default_preset.get(kind)!r}")
    limits = Limits(**(raw.get("limits") or {}))
    queue = raw.get("queue") or {}
    for kind in ("zerogpu", "local"):
        check(isinstance(queue.get(kind), dict) and {"gpu_concurrency", "cpu_concurrency"} <= set(queue[kind]),
               f"`queue.{kind}` must give gpu_concurrency and cpu_concurrency, got {queue.get(kind)!r}")
    z = raw.get("zerogpu") or {}
    quota = GpuQuota(float(z.get("duration_factor", 1.5)), int(z.get("max_call_seconds", 60)),
                     dict(z.get("daily_quota_seconds") or GpuQuota().daily_seconds))
    return SpaceConfig(raw.get("space") or {}, presets, default_preset, raw.get("defaults") or {}, limits,
                       queue, raw.get("evaluation") or {}, raw.get("sessions") or {}, quota,
                       raw.get("local_gpu") or {})


# --- one run's request -----------------------------------------------------------------------------------------------

@dataclass
class RunRequest:
    """Everything the stage buttons send, checked against the limits."""

    dataset: str  # "sample", a Hub id, or a local folder (an extracted upload)
    classes: list[str]  # class names (or indices as strings)
    preset: str  # a key of SpaceConfig.presets
    ipc: int
    images_per_class: int  # source images per class used (the first N)
    seed: int
    strength: float
    guidance_scale: float
    steps: int  # num_inference_steps; int(steps x strength) are run
    config_name: str | None = None
    split: str = "train"
    captions_from: str | None = None  # published captions (Hub id) reused instead of captioning
    streaming: bool = False  # stream the source: read only the selected classes' first images (Hub datasets)

    @property
    def denoising_steps(self) -> int:
        return max(1, int(self.steps * self.strength))


MAX_SEED = 2**32 - 1  # the app's seeds: what the Random seed button draws from, and exact in a JSON number
MAX_GUIDANCE_SCALE = 20.0  # the Guidance scale slider's range is [0, MAX_GUIDANCE_SCALE]
MAX_TEXT = 200  # characters in any text the app reads (dataset, classes, captions source)
NAME = re.compile(r"[\w.\-]{1,64}")  # a configuration or split name


def _int(value, name: str) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"`{name}` must be a whole number, got {value!r}") from None
    check(math.isfinite(number) and number == int(number), f"`{name}` must be a whole number, got {value!r}")
    return int(number)


def _float(value, name: str, low: float, high: float, *, low_included: bool = True) -> float:
    """A number in [low, high] (or (low, high] with `low_included=False`); NaN, infinities and text are refused."""
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        number = math.nan
    ok = math.isfinite(number) and (low <= number if low_included else low < number) and number <= high
    check(ok, f"`{name}` must be a number in {'[' if low_included else '('}{low:g}, {high:g}], got {value!r}")
    return number


def check_text(value, name: str, pattern: re.Pattern | None = None, max_length: int = MAX_TEXT) -> str:
    """A text control's value, stripped: at most `max_length` printable characters (matching `pattern` when given).

    Raises:
        ValueError: naming the control, the value (shortened) and what is expected.
    """
    text = "" if value is None else str(value).strip()
    shown = repr(text if len(text) <= 60 else text[:60] + "...")
    check(len(text) <= max_length, f"`{name}` must be at most {max_length} characters, got {len(text)}: {shown}")
    check(text.isprintable(), f"`{name}` must not contain control characters (newlines, tabs, ...), got {shown}")
    if pattern is not None and text:
        check(pattern.fullmatch(text) is not None, f"`{name}` may only contain letters, digits, '_', '.' and '-' "
                                                    f"(at most 64), got {shown}")
    return text


def check_hub_id(value: str, name: str) -> str:
    """`value` is a well-formed Hub repository id (`name` or `namespace/name`)."""
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(value)
    except ValueError as err:
        raise ValueError(f"`{name}` must be a Hub dataset id such as frgfm/imagenette ({err})") from None
    return value


def make_request(space: SpaceConfig, *, dataset: str, classes: list[str] | None, preset: str, ipc=None,
                 images_per_class=None, config_name: str | None = None, split: str | None = None,
                 captions_from: str | None = None, seed=None, strength=None, guidance_scale=None, steps=None,
                 streaming: bool = False) -> RunRequest:
    """Builds a `RunRequest` from UI values and enforces the Space's limits; a value left out (None) takes its
    initial control value (`SpaceConfig.controls`).

    Raises:
        LimitError: a value over a limit (the message names it and the allowed maximum).
        ValueError: a malformed value.
    """
    classes = [check_text(c, "classes") for c in (classes or []) if str(c).strip()]
    check(preset in space.presets, f"`preset` must be one of {sorted(space.presets)}, got {preset!r}")
    initial = space.controls(preset)
    ipc, seed, steps = (initial[k] if v in (None, "") else v for k, v in (("ipc", ipc), ("seed", seed), ("steps", steps)))
    images_per_class = initial["images_per_class"] if images_per_class in (None, "") else images_per_class
    strength = initial["strength"] if strength is None else strength
    guidance_scale = initial["guidance_scale"] if guidance_scale is None else guidance_scale
    check(bool(classes), "choose at least one class (Dataset tab)")
    ipc, steps, seed = _int(ipc, "ipc"), _int(steps, "steps"), _int(seed, "seed")
    check(ipc >= 1 and steps >= 1, f"IPC and steps must be at least 1, got {ipc} and {steps}")
    check(0 <= seed <= MAX_SEED, f"`seed` must be a whole number from 0 to {MAX_SEED}, got {seed}")
    images = check_selection(space, classes, images_per_class, ipc=ipc, steps=steps)
    return RunRequest(dataset=check_text(dataset, "dataset") or "sample", classes=classes, preset=preset, ipc=ipc,
                      images_per_class=images, config_name=check_text(config_name, "configuration", NAME) or None,
                      split=check_text(split, "split", NAME) or "train",
                      captions_from=check_text(captions_from, "captions_from") or None, seed=seed,
                      strength=_float(strength, "strength", 0.0, 1.0, low_included=False),
                      guidance_scale=_float(guidance_scale, "guidance_scale", 0.0, MAX_GUIDANCE_SCALE),
                      steps=steps, streaming=bool(streaming))


def check_selection(space: SpaceConfig, classes: list[str] | None, images_per_class, *, ipc: int = 1,
                    steps: int = 1) -> int:
    """Checks a request against the per-run limits and returns the images per class (default: the limit).

    Raises:
        LimitError: naming every value over its limit and the allowed maximum.
    """
    lim = space.limits
    images = _int(images_per_class if images_per_class not in (None, "") else lim.max_images_per_class,
                  "images_per_class")
    check(images >= 1, f"source images per class must be at least 1, got {images}")
    over = []
    if len(classes or []) > lim.max_classes:
        over.append(f"{len(classes)} classes selected; this Space allows at most {lim.max_classes}")
    if ipc > lim.max_ipc:
        over.append(f"IPC {ipc} asked for; this Space allows at most {lim.max_ipc} images per class")
    if images > lim.max_images_per_class:
        over.append(f"{images} source images per class asked for; this Space uses at most {lim.max_images_per_class}")
    if steps > lim.max_steps:
        over.append(f"{steps} inference steps asked for; this Space allows at most {lim.max_steps}")
    if over:
        raise LimitError("Over this Space's limits: " + "; ".join(over) + ". Lower the value, or run vldd on your "
                         "own machine (`vldd distill`), which has no limits.")
    return images


def distill_config(request: RunRequest, space: SpaceConfig, run_dir: str | Path) -> DistillConfig:
    """The `DistillConfig` of a request: the preset's base, its overrides, then the request's values."""
    preset = space.presets[request.preset]
    values = merge(preset.overrides, {
        "preset": preset.base, "output": str(run_dir), "ipc": request.ipc, "seed": request.seed,
        "data": {"dataset": request.dataset, "config_name": request.config_name, "split": request.split,
                 "classes": list(request.classes), "max_images_per_class": request.images_per_class,
                 "streaming": request.streaming},
        "caption": {"from_hub": request.captions_from},
        "generation": {"strength": request.strength, "guidance_scale": request.guidance_scale,
                       "num_inference_steps": request.steps},
    })
    return from_dict(values)


def estimate_run_seconds(request: RunRequest, stages: tuple[str, ...], space: SpaceConfig) -> int:
    """GPU seconds a run of `stages` needs: load + images x (caption + encode) + classes x IPC x denoising steps.

    The same inputs as the GPU function, as ZeroGPU's `@spaces.GPU(duration=...)` expects.
    """
    s = space.presets[request.preset].gpu_seconds
    images = len(request.classes) * request.images_per_class
    seconds = s.get("load", 0.0)
    if "caption" in stages and not request.captions_from:
        seconds += images * s.get("caption", 0.0)
    if "prototypes" in stages:
        seconds += images * s.get("encode", 0.0) + len(request.classes) * request.ipc * s.get("encode", 0.0)
    if "generate" in stages:
        seconds += len(request.classes) * request.ipc * request.denoising_steps * s.get("step", 0.0)
    return max(1, int(seconds + 0.999))


def class_seconds(request: RunRequest, stages: tuple[str, ...], space: SpaceConfig) -> int:
    """GPU seconds of one class's call (every class has the same inputs: `images_per_class` images, IPC)."""
    return estimate_run_seconds(dataclasses.replace(request, classes=request.classes[:1]), stages, space)


# --- sessions: one run directory per browser session -----------------------------------------------------------------

@dataclass
class Activity:
    """What a session's current event is doing, for Stop: which button, and how far a per-class run got."""

    what: str  # the button, e.g. "Generate"
    classes: bool = False  # a per-class run (stops between classes); else one step that ends by itself
    done: int = 0  # classes finished (kept on disk)
    total: int = 0
    ended: threading.Event = field(default_factory=threading.Event)

    def stopped_message(self) -> str:
        if self.done == 0:
            return f"Stopped {self.what} before its first class; run again to start it."
        return (f"Stopped {self.what} after class {self.done} of {self.total}; finished classes are kept; run again "
                "to resume.")


class SessionBusy(ValueError):
    """Another event of the same session holds its files."""


class Sessions:
    """Per-session working directories under one root; sessions idle longer than `ttl_hours` are deleted.

    The directory name is a hash of Gradio's session id, so nothing a visitor sends becomes a path. One event at a
    time works on a session's files (`working`); Stop and the session's end set the session's stop flag, which a
    per-class run checks between classes, and a session that ends while an event works on it is deleted when that
    event ends, never under it.
    """

    def __init__(self, root: str | Path, ttl_hours: float = 6.0):
        self.root = Path(root)
        self.ttl_seconds = ttl_hours * 3600
        self._locks: dict[Path, threading.Lock] = {}
        self._stops: dict[Path, threading.Event] = {}
        self._activity: dict[Path, Activity] = {}
        self._closing: set[Path] = set()
        self._guard = threading.Lock()

    def lock(self, session_hash: str | None) -> threading.Lock:
        """The session's lock: events of one session that write its files hold it, so they never interleave."""
        with self._guard:
            return self._locks.setdefault(self.path(session_hash), threading.Lock())

    def stop_flag(self, session_hash: str | None) -> threading.Event:
        """Set by Stop and by the session's end; cleared when the session's next event starts."""
        with self._guard:
            return self._stops.setdefault(self.path(session_hash), threading.Event())

    @contextmanager
    def working(self, session_hash: str | None, what: str, classes: bool = False) -> Iterator[Activity]:
        """Holds the session's files for one event (refused at once when another event holds them).

        Raises:
            SessionBusy: another event of this session is running.
        """
        path, lock = self.path(session_hash), self.lock(session_hash)
        if not lock.acquire(blocking=False):
            raise SessionBusy("This session is busy with another run or upload; wait for it to finish (or press "
                              "Stop), then try again.")
        activity = Activity(what, classes)
        with self._guard:
            self._stops.setdefault(path, threading.Event()).clear()
            self._activity[path] = activity
        try:
            yield activity
        finally:
            with self._guard:
                self._activity.pop(path, None)
                closing = path in self._closing
                lock.release()
            activity.ended.set()
            if closing:
                self._remove(path)

    def stop(self, session_hash: str | None, wait: float = 0.0) -> str:
        """Sets the session's stop flag and says what it stopped; waits up to `wait` seconds for a per-class run to
        reach the end of its current class."""
        path = self.path(session_hash)
        self.stop_flag(session_hash).set()
        with self._guard:
            activity = self._activity.get(path)
        if activity is None:
            return "Nothing was running."
        if not activity.classes:
            return f"{activity.what} runs as one step and ends by itself; nothing else was running."
        activity.ended.wait(wait)
        if not activity.ended.is_set():
            where = f"class {activity.done + 1} of {activity.total}" if activity.total else "its first class"
            return (f"Stopping {activity.what} after the class it is on ({where}); finished classes are kept; run "
                    "again to resume.")
        if activity.total and activity.done >= activity.total:  # it ended on its own before reaching the flag
            return f"Nothing was stopped: {activity.what} had finished all {activity.total} classes."
        return activity.stopped_message()

    def path(self, session_hash: str | None) -> Path:
        if not session_hash:
            raise ValueError("this request carries no session id; use the web page or gradio_client")
        return self.root / hashlib.sha256(session_hash.encode()).hexdigest()[:24]

    def run_dir(self, session_hash: str | None) -> Path:
        """The session's run directory (created, and the session marked active)."""
        session = self.path(session_hash)
        (session / "run").mkdir(parents=True, exist_ok=True)
        os.utime(session)
        self.prune(keep=session)
        return session / "run"

    def upload_dir(self, session_hash: str | None) -> Path:
        return self.path(session_hash) / "uploads"

    def close(self, session_hash: str | None) -> None:
        """The session ended: its run stops after the current class, and its directory goes now, or, while an event
        works on it, as soon as that event ends."""
        if not session_hash:
            return
        path = self.path(session_hash)
        self.stop_flag(session_hash).set()
        lock = self.lock(session_hash)
        with self._guard:
            if not lock.acquire(blocking=False):
                self._closing.add(path)  # `working` removes it when its event ends
                return
        try:
            self._remove(path)
        finally:
            with self._guard:
                lock.release()
                if self._locks.get(path) is lock:
                    del self._locks[path]

    def _remove(self, path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)
        with self._guard:
            self._closing.discard(path)
            self._stops.pop(path, None)
            lock = self._locks.get(path)
            if lock is not None and not lock.locked():
                del self._locks[path]

    def prune(self, keep: Path | None = None) -> None:
        """Deletes sessions idle past the TTL (never one an event is working on)."""
        if not self.root.is_dir():
            return
        cutoff = time.time() - self.ttl_seconds
        for session in self.root.iterdir():
            if session != keep and session.is_dir() and session.stat().st_mtime < cutoff:
                with self._guard:
                    busy = session in self._activity
                if not busy:
                    shutil.rmtree(session, ignore_errors=True)


# Any absolute path of two parts or more (a lone "/etc" is a visitor's own input, echoed back as typed).
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~-])/(?:[^\s/'\"`()\[\]<>,;]+/)+([^\s/'\"`()\[\]<>,;]*)")


def public_text(text: str, private_roots: list[str | Path]) -> str:
    """`text` without the server's absolute paths, for a visitor: a path under one of `private_roots` (the sessions
    root, Gradio's upload cache) loses the root and the session's hashed folder (`uploads/shapes`, `run/work/...`);
    any other absolute path is cut to `…/<last part>`."""
    for root in sorted((str(r).rstrip("/") for r in private_roots), key=len, reverse=True):
        text = re.sub(re.escape(root) + r"/(?:[0-9a-f]{24}/)?", "", text)
    return _ABSOLUTE_PATH.sub(lambda m: "…/" + m.group(1), text)


# --- datasets: the sample, a Hub id, or an uploaded zip --------------------------------------------------------------

def resolve_dataset(dataset: str, upload: str | None, *, upload_dir: Path, allow_local_paths: bool,
                    limits: UploadLimits, uploads_cache: Path | None = None) -> str:
    """What to load: an uploaded zip (extracted), else `dataset` ("sample", a Hub id or, where allowed, a folder).

    With `uploads_cache` (Gradio's upload folder), the zip is removed from it once extracted or refused.
    """
    if upload:
        return str(open_upload(upload, upload_dir, limits, uploads_cache))
    dataset = check_text(dataset, "dataset") or "sample"
    if dataset == "sample" or (allow_local_paths and _is_local(dataset)):
        return dataset
    if _is_local(dataset):
        raise ValueError(f"{dataset!r} is a local path, and this app reads only Hub datasets, the sample and "
                         "uploaded zips (local folders only when it serves this machine alone: bound to localhost "
                         "without --share, or started with --allow-local-paths)")
    return check_hub_id(dataset, "dataset")


def open_upload(upload: str | Path, upload_dir: Path, limits: UploadLimits, uploads_cache: Path | None = None) -> Path:
    """An uploaded zip, extracted into the session's `upload_dir` once, and then (or once refused) removed from
    Gradio's `uploads_cache`, where it would otherwise stay for hours.

    Gradio names its copy of an upload by a hash of the content, so the copy's path names the extracted folder: a
    later event of the session that sends the same (since removed) upload finds the folder without the zip.
    """
    path = Path(upload)
    if uploads_cache is None or Path(uploads_cache).resolve() not in path.resolve().parents:
        return extract_upload(path, upload_dir, limits)  # not Gradio's copy: named by its content, and kept
    folder = hashlib.sha256(str(path).encode()).hexdigest()[:16]
    if not path.is_file() and not (upload_dir / folder).is_dir():
        raise UploadError(f"{path.name!r} is no longer on the server (an upload is removed once it is unpacked, and "
                          "a new session starts empty); upload it again")
    try:
        return extract_upload(path, upload_dir, limits, folder_name=folder)
    finally:
        discard_upload(path, uploads_cache)


def discard_upload(path: str | Path, uploads_cache: str | Path) -> None:
    """Removes an upload from Gradio's cache, and its folder once empty; a path outside the cache is left alone."""
    path, cache = Path(path).resolve(), Path(uploads_cache).resolve()
    if cache in path.parents:
        path.unlink(missing_ok=True)
        if path.parent != cache:
            with contextlib.suppress(OSError):  # not empty: something else of Gradio's is there
                path.parent.rmdir()


def _is_local(name: str) -> bool:
    return name.startswith(("/", "~", ".")) or Path(name).exists()


def check_captions_source(captions_from: str | None, *, allow_local_paths: bool) -> None:
    """Refuses, where local paths are not allowed (a Space), published captions named by a path on the server (another
    session's run, say)."""
    captions_from = check_text(captions_from, "captions_from")
    if not captions_from or (allow_local_paths and _is_local(captions_from)):
        return
    if _is_local(captions_from):
        raise ValueError(f"published captions {captions_from!r} name a local path; this app reads captions from "
                         "Hub datasets only")
    check_hub_id(captions_from, "captions_from")


def is_hub_id(dataset: str) -> bool:
    """Whether `dataset` names a Hub dataset (not the sample, not a local folder)."""
    return dataset != "sample" and not Path(dataset).expanduser().exists()


@dataclass
class DatasetOverview:
    class_names: list[str]  # every class of the dataset
    selected: list[str]  # the classes a run will use
    counts: list[list[Any]]  # rows: class, images in the split, images used, selected
    preview: list[tuple[Any, str]]  # (image, caption) per shown image, grouped by class
    message: str


def dataset_overview(dataset: str, *, classes: list[str] | None, images_per_class: int, num_default: int,
                     preview_per_class: int, config_name: str | None = None, split: str = "train",
                     streaming: bool = False, stream_dir: str | Path | None = None) -> DatasetOverview:
    """Opens a dataset and describes it: class names, per-class counts, a preview grid of the selected classes.

    Args:
        classes: the wanted classes (names or index strings); empty = the first `num_default`.
        streaming: read only what the preview needs (class names come from the features; totals stay unknown).
        stream_dir: where the streamed preview is copied (the session directory, deleted with it).
    """
    from ..configs.distill import DataConfig
    from ..data.sources import load_source

    every = None
    if streaming:
        names = _streamed_class_names(dataset, split, config_name)
    else:
        every = load_source(DataConfig(dataset=dataset, config_name=config_name, split=split))
        names = every.class_names
    wanted = [c for c in (classes or []) if c]
    if wanted:
        missing = [c for c in wanted if c not in names and not (c.isdigit() and int(c) < len(names))]
        check(not missing, f"classes {missing} are not in {dataset!r}; its classes are {names[:20]}"
                            + (" ..." if len(names) > 20 else ""))
        selected = [names[int(c)] if c not in names else c for c in wanted]
    else:
        selected = [name for i, name in enumerate(names) if every is None or every.indices[i]][:num_default]
    shown = load_source(DataConfig(dataset=dataset, config_name=config_name, split=split, classes=list(selected),
                                   max_images_per_class=preview_per_class, streaming=streaming),
                        stream_dir=stream_dir)
    preview = []
    for label in shown.classes:
        images, _, _ = shown.load_class(label)
        preview += [(image, names[label]) for image in images]
    if every is not None:
        counts = [[name, len(every.indices[i]), min(len(every.indices[i]), images_per_class), name in selected]
                  for i, name in enumerate(names)]
        size = f"{len(names)} classes, {every.dataset.num_rows} images"
    else:
        counts = [[name, None, images_per_class if name in selected else 0, name in selected] for name in names]
        size = f"{len(names)} classes (streamed: only the selected classes' first images are read)"
    message = f"**{dataset}** ({split}): {size}. Selected {len(selected)}: {', '.join(selected)}."
    return DatasetOverview(names, selected, counts, preview, message)


def _streamed_class_names(dataset: str, split: str, config_name: str | None) -> list[str]:
    import datasets

    from ..data.sources import find_column, open_dataset

    stream = open_dataset(dataset, split, config_name, streaming=True)
    if stream.features is None:
        raise ValueError(f"dataset {dataset!r} does not declare its features when streamed")
    return list(stream.features[find_column(stream, datasets.ClassLabel, None, "label")].names)


# --- models, loaded once per process ---------------------------------------------------------------------------------

Placement = tuple[str, str]  # (device, dtype) as strings, decided in the main process


def placement(config: DistillConfig) -> Placement:
    """Where a run's models go, decided once in the main process (a ZeroGPU worker reuses what it decided)."""
    from ..core.devices import resolve_device, resolve_dtype

    device = resolve_device(config.device)
    return str(device), str(resolve_dtype(config.dtype, device)).removeprefix("torch.")


class ModelCache:
    """Captioners and Stable Diffusion pipelines, each loaded once per process (key: model, revision, placement).

    On ZeroGPU, `preload` loads them at start-up, in the main process, as ZeroGPU requires; a forked GPU worker
    finds them here (`ModelCache.shared`). On a local GPU, a captioner is evicted before a pipeline loads unless
    both fit (`keep_both_bytes` of free GPU memory).
    """

    _shared: dict[str | None, ModelCache] = {}

    def __init__(self, cache_dir: str | Path | None = None, keep_both_bytes: int | None = None):
        self.cache_dir = cache_dir  # where tiny:// models are built
        self.keep_both_bytes = keep_both_bytes  # None: never evict (ZeroGPU, CPU)
        self._models: dict[tuple, Any] = {}
        self._lock = threading.Lock()

    @classmethod
    def shared(cls, cache_dir: str | Path | None = None) -> ModelCache:
        """The process's cache for `cache_dir`: models live as long as the process (ZeroGPU requires it)."""
        key = str(cache_dir) if cache_dir is not None else None
        return cls._shared.setdefault(key, cls(cache_dir))

    def _get(self, key: tuple, load: Callable[[], Any]):
        with self._lock:
            if key not in self._models:
                self._models[key] = load()
            return self._models[key]

    def captioner(self, config: DistillConfig, where: Placement | None = None):
        from ..stages.caption import load_captioner

        device, dtype = where or placement(config)
        c = config.caption
        kernels = config.hub_kernels
        return self._get(("captioner", c.model, c.revision, device, dtype, kernels), lambda: load_captioner(
            c.model, revision=c.revision, device=device, dtype=_dtype(dtype), cache_dir=self.cache_dir,
            hub_kernels=kernels))

    def pipeline(self, config: DistillConfig, where: Placement | None = None):
        from ..stages.generate import load_pipeline

        device, dtype = where or placement(config)
        g = config.generation
        key = ("pipeline", g.model, g.revision, g.scheduler, g.lora, device, dtype, config.hub_kernels)
        if key not in self._models and device.startswith("cuda"):
            self.evict_captioners_unless_free(self.keep_both_bytes)
        return self._get(key, lambda: load_pipeline(g.model, revision=g.revision, device=device, dtype=_dtype(dtype),
                                                    scheduler=g.scheduler, lora=g.lora, cache_dir=self.cache_dir,
                                                    hub_kernels=config.hub_kernels))

    def evict_captioners_unless_free(self, needed: int | None) -> list[str]:
        """Drops every loaded captioner unless `needed` bytes of GPU memory are free (the CLI frees the captioner
        before Stable Diffusion too); returns the evicted model ids."""
        import torch

        if needed is None or not torch.cuda.is_available() or torch.cuda.mem_get_info()[0] >= needed:
            return []
        with self._lock:
            evicted = [key for key in self._models if key[0] == "captioner"]
            for key in evicted:
                del self._models[key]
        torch.cuda.empty_cache()
        return [key[1] for key in evicted]

    def deferred(self, kind: str, config: DistillConfig, where: Placement | None = None):
        """A stand-in that loads the model on first use, so a run whose stages are all on disk loads nothing."""
        return _Deferred(lambda: getattr(self, kind)(config, where))

    def preload(self, config: DistillConfig) -> None:
        if not config.caption.from_hub:
            self.captioner(config)
        self.pipeline(config)


def _dtype(name: str):
    import torch

    return getattr(torch, name)


class _Deferred:
    def __init__(self, load: Callable[[], Any]):
        self._load = load

    def __getattr__(self, name: str):
        return getattr(self._load(), name)

    def __call__(self, *args, **kwargs):
        return self._load()(*args, **kwargs)


# --- running stages: the source opened once on the CPU, then one GPU call per class ----------------------------------

def open_source(config: DistillConfig, stream_dir: str | Path | None = None):
    """Opens a run's source once, on the CPU (a Hub source streamed into `stream_dir`, capped per class), and checks
    what can be checked before any GPU call: the classes exist, each has enough images for the IPC, and published
    captions (`caption.from_hub`) load and match the classes.

    Raises:
        ValueError: an unknown class, a class with too few images, unusable captions (the message says which).
    """
    from ..data.sources import load_source

    source = load_source(config.data, stream_dir=stream_dir)
    from ..jobs.distill import cluster_plan

    cluster_plan(config.resolve(source.profile)[0], source)
    if config.caption.from_hub:  # published captions: present, well-formed, and named like the source's classes
        from ..hub.captions import load_published_captions

        load_published_captions(config.caption.from_hub, class_names=source.class_names)
    return source


def run_class(job: ClassJob, models: ModelCache) -> ClassResult:
    """One GPU call's work: `job.stages` on one class, with the process's models at the main process's placement."""
    from ..jobs.distill import distill

    config = job.config
    label = job.source.classes[0]
    captioner = models.deferred("captioner", config, job.placement) if "caption" in job.stages and not \
        config.caption.from_hub else None
    pipeline = models.deferred("pipeline", config, job.placement) if {"prototypes", "generate"} & set(job.stages) \
        else None
    distill(config, stages=job.stages, source=job.source, cache_dir=models.cache_dir, progress=True,
            captioner=captioner, pipeline=pipeline)
    decoded = []
    if job.decode:
        import torch

        from ..stages.prototypes import decode_latents

        protos = torch.load(_work(Path(config.output), "prototypes", label, ".pt"), weights_only=True)
        decoded = decode_latents(models.pipeline(config, job.placement).vae, protos["centers"])
    return ClassResult(label, decoded)


def finish_run(config: DistillConfig, source, stages: tuple[str, ...]) -> str:
    """After every class's GPU call: writes the run's combined outputs (captions, dataset, preview, manifest) on the
    CPU, loading no model, and returns the summary shown to the visitor."""
    from ..jobs.distill import distill

    result = distill(config, stages=stages, source=source)
    what = " → ".join(dict.fromkeys("text prototypes" if s == "text" else s for s in stages))
    return _summary(result, what)


def _summary(result, what: str) -> str:
    from ..configs.distill import TINY_NOTE

    lines = [f"**Note**: {TINY_NOTE}"] if result.manifest.get("tiny") else []
    if result.dataset is not None:
        lines.append(f"Distilled {result.dataset.num_rows} images ({len(result.manifest['source']['classes'])} classes "
                     f"× IPC {result.manifest['config']['ipc']}).")
    else:
        lines.append(f"Done: {what}.")
    return "\n".join(lines)


# --- what each tab shows ---------------------------------------------------------------------------------------------

def _work(run_dir: Path, stage: str, label: int, suffix: str) -> Path:
    return Path(run_dir) / "work" / stage / f"{label:06d}{suffix}"


def _classes(run_dir: Path) -> list[tuple[int, str]]:
    source = read_json(Path(run_dir) / "manifest.json", default={}).get("source") or {}
    return [(label, source["class_names"][label]) for label in source.get("classes", [])]


def _thumbnail(image, size: int = 56) -> str:
    image = image.convert("RGB")
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


@dataclass
class CaptionView:
    table_html: str  # thumbnails, classes and captions
    csv_path: Path  # every caption, for download
    rows: int


def caption_view(config: DistillConfig, max_rows_per_class: int = 20, source=None) -> CaptionView:
    """The captions of a run as an HTML table with thumbnails (first rows per class) and a CSV of all of them.

    Args:
        source: the run's source, already opened (`open_source`); None = opened here.
    """
    from ..data.sources import load_source

    run_dir = Path(config.output)
    source = source if source is not None else load_source(config.data)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["source_row", "label", "class_name", "caption"])
    cells, total = [], 0
    for label, name in _classes(run_dir):
        record = read_json(_work(run_dir, "caption", label, ".json"))
        if record is None:
            continue
        for row, caption in zip(record["rows"], record["captions"]):
            writer.writerow([row, label, name, caption])
        total += len(record["rows"])
        shown = dict(zip(record["rows"][:max_rows_per_class], record["captions"]))
        if label in source.indices:
            head = dataclasses.replace(source, indices={label: [r for r in source.indices[label] if r in shown]})
            images, rows, _ = head.load_class(label)
            for image, row in zip(images, rows):
                cells.append(f'<tr><td><img src="{_thumbnail(image)}" alt="source row {row}"></td>'
                             f"<td>{html.escape(name)}</td><td>{row}</td><td>{html.escape(shown[row])}</td></tr>")
    csv_path = run_dir / "captions.csv"
    write_text(csv_path, out.getvalue())
    table = ('<table class="vldd-captions"><thead><tr><th>image</th><th>class</th><th>source row</th>'
             f'<th>caption</th></tr></thead><tbody>{"".join(cells)}</tbody></table>')
    return CaptionView(table, csv_path, total)


@dataclass
class PrototypeView:
    clusters: list[list[Any]]  # rows: class, cluster, images, outliers dropped (class), score, fallback
    images: list[tuple[Any, str]]  # decoded prototypes with captions
    highlighted: list[tuple[str, str | None]]  # chosen descriptions, top words marked "top word"
    summary: str


def highlight(prompt: str, top_words: list[tuple[str, int]] | list[list]) -> list[tuple[str, str | None]]:
    """Splits `prompt` into (text, "top word" | None) segments, marking the top words the way the score counts them
    (case-sensitive substrings)."""
    words = sorted({w for w, _ in top_words if w and w in prompt}, key=len, reverse=True)
    if not words:
        return [(prompt, None)]
    segments, last = [], 0
    for match in re.finditer("|".join(re.escape(w) for w in words), prompt):
        if match.start() > last:
            segments.append((prompt[last:match.start()], None))
        segments.append((match.group(), "top word"))
        last = match.end()
    if last < len(prompt):
        segments.append((prompt[last:], None))
    return segments


def prototype_view(run_dir: str | Path, decoded: dict[int, list] | None = None) -> PrototypeView:
    """Cluster sizes, outliers, decoded prototypes (per label, when given) and each cluster's chosen description."""
    import torch

    run_dir = Path(run_dir)
    clusters, images, highlighted, lines = [], [], [], []
    for label, name in _classes(run_dir):
        path = _work(run_dir, "prototypes", label, ".pt")
        texts = read_json(_work(run_dir, "text", label, ".json"), default=[])
        if not path.is_file():
            continue
        protos = torch.load(path, weights_only=True)
        outliers = sum(1 for a in protos["assignment"] if a < 0)
        sizes = protos["cluster_sizes"]
        lines.append(f"**{name}**: {len(protos['assignment'])} images, {outliers} outliers dropped, "
                     f"{len(sizes)} clusters of {', '.join(map(str, sizes))} images")
        pictures = (decoded or {}).get(label, [])
        for c, size in enumerate(sizes):
            text = texts[c] if c < len(texts) else {}
            clusters.append([name, c, size, outliers, text.get("score"), text.get("fallback") or ""])
            if c < len(pictures):
                images.append((pictures[c], f"{name} · prototype {c} ({size} images)"))
            if text:
                highlighted.append((f"{name} · cluster {c} ({size} images): ", "cluster"))
                highlighted += highlight(text["prompt"], text["top_words"])
                highlighted.append(("\n\n", None))
    return PrototypeView(clusters, images, highlighted, "\n\n".join(lines))


def gallery(run_dir: str | Path) -> list[tuple[str, str]]:
    """The generated images, class by class, each captioned with its class and prompt."""
    run_dir = Path(run_dir)
    items = []
    for label, name in _classes(run_dir):
        texts = read_json(_work(run_dir, "text", label, ".json"), default=[])
        folder = _work(run_dir, "generate", label, "")
        for c, text in enumerate(texts):
            path = folder / f"{c:04d}.png"
            if path.is_file():
                items.append((str(path), f"{name} #{c}: {text['prompt']}"))
    return items


# --- evaluation ------------------------------------------------------------------------------------------------------

def evaluation_available() -> bool:
    try:
        from ..jobs.evaluate import evaluate  # noqa: F401
    except ImportError:
        return False
    return True


def prepare_eval_data(run_dir: str | Path, dest: str | Path, per_class: int, baseline: bool) -> Path:
    """Copies, on the CPU, what the quick evaluation reads of the real dataset: the first `per_class` validation
    images of each distilled class and, for the random baseline, the first `per_class` training images (a Hub source
    is streamed, never downloaded whole). Returns the saved `DatasetDict` (splits "validation", "train").
    """
    import datasets

    from ..configs.distill import load_config
    from ..configs.evaluate import VAL_SPLIT_FALLBACKS

    data = load_config(Path(run_dir) / "config.yaml").data
    dest = Path(dest)
    streaming = is_hub_id(data.dataset)

    def copy(split: str):
        from ..data.sources import load_source

        source = load_source(dataclasses.replace(data, split=split, max_images_per_class=per_class,
                                                 streaming=streaming), stream_dir=dest.parent / "stream")
        rows = [r for label in source.classes for r in source.indices[label]]
        positions = [source.positions[r] for r in rows] if source.positions is not None else rows
        table = source.dataset.select(positions).select_columns([source.image_column, source.label_column])
        table = table.rename_columns({source.image_column: "image", source.label_column: "label"})
        return table.cast_column("image", datasets.Image())

    splits, errors = {}, []
    for split in ("validation", *VAL_SPLIT_FALLBACKS):
        try:
            splits["validation"] = copy(split)
            break
        except ValueError as err:
            errors.append(f"{split}: {err}")
    check("validation" in splits, f"{data.dataset!r} has no split to test on ({'; '.join(errors)})")
    if baseline:
        splits["train"] = copy(data.split)
    shutil.rmtree(dest, ignore_errors=True)
    datasets.DatasetDict(splits).save_to_disk(str(dest))
    return dest


def eval_settings(space: SpaceConfig, epochs, random_baseline: bool) -> dict[str, Any]:
    """The quick evaluation's EvalConfig values, with `epochs` checked against the limit."""
    e = space.evaluation
    epochs = _int(epochs, "epochs")
    check(epochs >= 1, f"`epochs` must be >= 1, got {epochs}")
    if epochs > e.get("max_epochs", 200):
        raise LimitError(f"{epochs} epochs asked for; this Space's quick evaluation allows at most "
                         f"{e.get('max_epochs', 200)}")
    return {"protocol": e.get("protocol", "hard"), "student": e.get("student"),
            "student_width": e.get("student_width", 1.0), "image_size": e.get("image_size", 64), "epochs": epochs,
            "repeats": e.get("repeats", 1), "baselines": ["random"] if random_baseline else [], "num_workers": 0,
            "val_per_class": e.get("val_per_class", 50)}


def check_evaluable(run_dir: str | Path) -> None:
    """Raises ValueError when the session has no distilled set yet (checked before any GPU call)."""
    if not (Path(run_dir) / "dataset").is_dir():
        raise ValueError("there is no distilled set to evaluate yet: run the Generate tab first")


def estimate_eval_seconds(run_dir: str | Path, settings: dict[str, Any], space: SpaceConfig) -> int:
    """GPU seconds of the quick evaluation: load + epochs x (training + test images) x seconds per image-epoch."""
    manifest = read_json(Path(run_dir) / "manifest.json", default={})
    classes = len((manifest.get("source") or {}).get("classes", [])) or 1
    ipc = (manifest.get("config") or {}).get("ipc", 1)
    sets = 1 + len(settings["baselines"])
    per = space.evaluation.get("gpu_seconds") or {}
    images = classes * ipc * sets + classes * space.evaluation.get("val_per_class", 50)
    return max(1, int(per.get("load", 0) + settings["epochs"] * images * per.get("image_epoch", 0.0) + 0.999))


@dataclass
class EvalView:
    plot_path: Path
    summary: str


def quick_evaluate(run_dir: str | Path, settings: dict[str, Any]) -> EvalView:
    """Trains a small student on the distilled set (and a random real subset) and tests it on real images."""
    from ..jobs.evaluate import EvalConfig, evaluate

    run_dir = Path(run_dir)
    result = evaluate(EvalConfig(distilled=str(run_dir), **settings), progress=True)
    from ..jobs.reports import evaluation_lines

    lines = [line for line in evaluation_lines(result) if not line.startswith("results:")]
    return EvalView(result.plot_path, f"{lines[0]}\n```\n" + "\n".join(line.strip() for line in lines[1:]) + "\n```")


# --- publishing ------------------------------------------------------------------------------------------------------

def suggest_repo(dataset: str, ipc, username: str | None) -> str:
    """`<user>/<source>-vldd-ipc<N>` (a bare name without a user: the push puts it in the signed-in account)."""
    from ..hub.names import source_short_name

    name = f"{source_short_name(dataset or 'sample')}-vldd-ipc{_int(ipc or 1, 'ipc')}"
    return f"{username}/{name}" if username else name


def push_token(oauth_token: str | None, *, on_space: bool) -> str | None:
    """The token to push with: the visitor's OAuth token. Off a Space, Gradio's mocked login stands for this
    machine's own login, so its placeholder is swapped for that token; on a Space it never is."""
    if not oauth_token:
        return None
    if oauth_token == GRADIO_MOCK_TOKEN and not on_space:
        from huggingface_hub import get_token

        return get_token()
    return oauth_token


@dataclass
class PublishView:
    message: str  # markdown: where it went, or why it did not
    snippet: str  # python code that loads it ("" when nothing was pushed)
    url: str | None = None


SIGN_IN_FIRST = ("**Sign in with Hugging Face first** (the button above): the distilled set is pushed to your own "
                 "account, with your permission, and nothing is published without it.")


def publish(run_dir: str | Path, repo_id: str, private: bool, token: str | None) -> PublishView:
    """Pushes the session's distilled set to the Hub with the visitor's token (never logged or shown)."""
    if not token:
        return PublishView(SIGN_IN_FIRST, "")
    run_dir = Path(run_dir)
    if not (run_dir / "dataset").is_dir():
        return PublishView("**Nothing to publish yet**: run the Generate tab first.", "")
    from ..hub.push import push_distilled

    result = push_distilled(run_dir, (repo_id or "").strip() or None, private=private, token=token)
    snippet = (f'from datasets import load_dataset\n\nds = load_dataset("{result.repo_id}", "{result.config_name}", '
               'split="train")')
    visibility = "private" if private else "public"
    message = (f"Published {result.num_rows} images to [{result.repo_id}]({result.url}) ({visibility}, configuration "
               f"`{result.config_name}`).")
    return PublishView(message, snippet, result.url)


def oauth_mode(on_space: bool) -> str:
    """"space": real Sign in with Hugging Face. "local": off a Space, Gradio mocks the button with this machine's
    login, which must exist and answer `whoami`. "off": neither, so no button is shown (Gradio would fail to start)."""
    if on_space:
        return "space"
    try:
        from huggingface_hub import get_token, whoami

        token = get_token()
        if token and whoami(token).get("type") == "user":
            return "local"
    except Exception as err:  # offline, invalid token, ...
        logger.info("no local Hugging Face login usable for the sign-in button (%s)", type(err).__name__)
    return "off"


# --- the Space's files agree with each other -------------------------------------------------------------------------

def read_front_matter(readme: str | Path) -> dict[str, Any]:
    """The YAML block between the leading `---` lines of a README."""
    text = Path(readme).read_text()
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, re.S)
    if not match:
        raise ValueError(f"{str(readme)!r} has no front matter (a YAML block between '---' lines at the top)")
    return yaml.safe_load(match.group(1)) or {}


def check_space_files(root: str | Path, space: SpaceConfig) -> list[str]:
    """Disagreements between README.md's front matter, requirements.txt and spaces_config.yaml (empty = none)."""
    root = Path(root)
    problems = []
    try:
        front = read_front_matter(root / "README.md")
    except (OSError, ValueError) as err:
        return [str(err)]
    expected = {"sdk": space.space.get("sdk", "gradio"), "sdk_version": str(space.space.get("sdk_version")),
                "app_file": space.space.get("app_file", "app.py"),
                "python_version": str(space.space.get("python_version")), "hf_oauth": True,
                "hf_oauth_scopes": space.space.get("hf_oauth_scopes")}
    for key, value in expected.items():
        got = front.get(key)
        got = str(got) if key in ("sdk_version", "python_version") and got is not None else got
        if got != value:
            problems.append(f"README.md front matter `{key}` is {got!r}; spaces_config.yaml says {value!r}")
    if not (root / str(front.get("app_file", ""))).is_file():
        problems.append(f"README.md's app_file {front.get('app_file')!r} does not exist")
    requirements = root / "requirements.txt"
    if not requirements.is_file():
        problems.append("requirements.txt is missing: a Space installs its dependencies from it")
    else:
        lines = [line.split("#")[0].strip().replace(" ", "") for line in requirements.read_text().splitlines()]
        if not {f"gradio=={expected['sdk_version']}", f"gradio[oauth]=={expected['sdk_version']}"} & set(lines):
            problems.append(f"requirements.txt must pin gradio=={expected['sdk_version']} (the sdk_version)")
        if not any(re.match(r"^spaces([<>=!~].*)?$", line) for line in lines):
            problems.append("requirements.txt must list `spaces` (ZeroGPU)")
        offered = [str(v) for v in space.space.get("zerogpu_torch") or []]
        torch_pins = [line.split("==", 1)[1] for line in lines if line.startswith("torch==")]
        if offered and (len(torch_pins) != 1 or torch_pins[0] not in offered):
            problems.append(f"requirements.txt must pin torch to one version ZeroGPU offers ({', '.join(offered)}), "
                            f"got {torch_pins or 'no torch== line'}")
        if not any(line.startswith("torchvision==") for line in lines):
            problems.append("requirements.txt must pin torchvision (the release built for the pinned torch)")
    return problems
