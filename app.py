"""vldd's Gradio app: distill a dataset stage by stage, then publish it to your Hugging Face account.

One tab per stage (Dataset, Captions, Prototypes, Generate, Evaluate, Publish), each from a small builder below;
what they do lives in `vldd.app.logic` (plain functions) and the library. Runs as a Hugging Face Space (ZeroGPU or
a dedicated GPU), on a local CUDA machine, and on a CPU (`python app.py` or `vldd app`). Settings: spaces_config.yaml.
"""

try:  # ZeroGPU needs `spaces` imported before anything touches CUDA
    import spaces
except ImportError:  # off a Space, without the package: a no-op stand-in
    spaces = None

import argparse
import inspect
import os
import tempfile
from dataclasses import dataclass, field
from functools import wraps
from pathlib import Path

import gradio as gr

from vldd.app import gpu as space_gpu
from vldd.app import logic
from vldd.cli.commands import hub_kernels_for_process
from vldd.hub.names import HubError

HERE = Path(__file__).resolve().parent
CSS = """
.vldd-captions img { width: 56px; height: 56px; object-fit: cover; }
.vldd-captions td { vertical-align: top; padding: 2px 8px; }
"""


def _flag(name: str) -> bool:
    return os.getenv(name, "").lower() in ("1", "t", "true")


@dataclass
class AppSettings:
    space: logic.SpaceConfig
    root: Path  # per-session run directories live here
    cache_dir: str | None = None  # where tiny:// models are built
    on_space: bool = False
    oauth: str = "off"  # "space", "local" or "off" (see logic.oauth_mode)
    has_gpu: bool = False
    zero_gpu: bool = False  # ZeroGPU: GPU calls are scheduled, counted against the visitor's quota
    local_paths: bool = False  # a visitor may name folders of this machine as sources (see `local_paths_allowed`)
    stop_wait_seconds: float = 60.0  # how long /stop waits for a run to reach the end of its class before answering
    sessions: logic.Sessions = field(init=False)

    def __post_init__(self):
        self.sessions = logic.Sessions(self.root, self.space.sessions.get("ttl_hours", 6))
        if not self.zero_gpu:  # a local GPU holds the captioner and SD together only when both fit
            self.models.keep_both_bytes = int(self.space.local_gpu.get("pipeline_gb", 6) * 2**30)

    @property
    def models(self) -> logic.ModelCache:
        return logic.ModelCache.shared(self.cache_dir)

    def public(self, text: str) -> str:
        """`text` without this server's paths (session folders, Gradio's upload cache), for a visitor."""
        return logic.public_text(text, [self.root, GRADIO_CACHE])


GRADIO_CACHE = os.environ.get("GRADIO_TEMP_DIR") or str(Path(tempfile.gettempdir()) / "gradio")
LOCALHOST = ("127.0.0.1", "localhost", "::1")


def local_paths_allowed(on_space: bool, host: str | None, share: bool, allow: bool = False) -> bool:
    """Local folders as sources only where nobody else can reach the app: never on a Space; elsewhere when it
    listens on localhost (the default) without a public share link, or when the owner passes --allow-local-paths."""
    if on_space:
        return False
    return allow or ((host or "127.0.0.1") in LOCALHOST and not share)


def default_settings(config: str | Path = HERE / "spaces_config.yaml", *, host: str | None = None,
                     share: bool = False, allow_local_paths: bool = False) -> AppSettings:
    """Settings from spaces_config.yaml, the launch flags and the environment (SYSTEM, SPACES_ZERO_GPU,
    VLDD_APP_ROOT, VLDD_CACHE)."""
    import torch

    on_space, zero_gpu = os.getenv("SYSTEM") == "spaces", _flag("SPACES_ZERO_GPU")
    return AppSettings(space=logic.load_space_config(config),
                       root=Path(os.environ.get("VLDD_APP_ROOT", Path(tempfile.gettempdir()) / "vldd-app")),
                       cache_dir=os.environ.get("VLDD_CACHE"), on_space=on_space, oauth=logic.oauth_mode(on_space),
                       has_gpu=zero_gpu or torch.cuda.is_available(), zero_gpu=zero_gpu,
                       local_paths=local_paths_allowed(on_space, host, share, allow_local_paths))


TRACK_TQDM = gr.Progress(track_tqdm=True)  # marks a handler's progress argument; Gradio passes a fresh tracker


# --- GPU work: module-level functions (ZeroGPU decorates them at import), plain picklable arguments ------------------

def _gpu(duration):
    return spaces.GPU(duration=duration) if spaces is not None else (lambda fn: fn)


def _gradio_errors(fn):
    """Inside a GPU function: any error becomes a gr.Error with its own message (ZeroGPU would otherwise show the
    visitor only the exception's class name)."""
    @wraps(fn)
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as err:
            raise gr.Error(str(err) or type(err).__name__, title=type(err).__name__) from err
    return call


@_gpu(duration=lambda job: job.seconds)
@_gradio_errors
def gpu_class(job: space_gpu.ClassJob) -> space_gpu.ClassResult:
    """One class's stages on the GPU, with the models this process loaded (at start-up on ZeroGPU)."""
    return logic.run_class(job, logic.ModelCache.shared(job.cache_dir))


@_gpu(duration=lambda run_dir, settings, seconds: seconds)
@_gradio_errors
def gpu_evaluate(run_dir: str, settings: dict, seconds: int) -> logic.EvalView:
    return logic.quick_evaluate(run_dir, settings)


# --- event handlers: UI values in, UI values out ---------------------------------------------------------------------

def _friendly(fn):
    """Shows what went wrong (limits, bad input, Hub refusals, errors from the GPU call) as a message instead of a
    stack trace, without the server's paths. Decorates `Handlers` methods (the first argument)."""
    expected = (gr.Error, ValueError, FileNotFoundError, HubError)

    def message(handlers: "Handlers", err: Exception) -> gr.Error:
        if isinstance(err, gr.Error):
            return gr.Error(handlers.s.public(str(err.message)), title=err.title)
        title = "Over a limit" if isinstance(err, logic.LimitError) else "Error"
        return gr.Error(handlers.s.public(str(err)), title=title)

    if inspect.isgeneratorfunction(fn):
        @wraps(fn)
        def stream(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except expected as err:
                raise message(args[0], err) from err
        return stream

    @wraps(fn)
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except expected as err:
            raise message(args[0], err) from err
    return call


SessionBusy = logic.SessionBusy
BUTTONS = {"caption": "Caption", "prototypes": "Build prototypes", "generate": "Generate"}
QUOTA_ERRORS = ("ZeroGPU quota exceeded", "ZeroGPU pending credits exceeded")  # titles of `spaces`' refusals


class Handlers:
    """The app's event handlers, bound to its settings (nothing global: several apps can run in one process)."""

    def __init__(self, settings: AppSettings):
        self.s = settings

    # helpers

    def _dataset(self, values: dict, session: str | None) -> str:
        s = self.s
        return logic.resolve_dataset(values["dataset"], values.get("upload"), upload_dir=s.sessions.upload_dir(session),
                                     allow_local_paths=s.local_paths, limits=s.space.limits.uploads(),
                                     uploads_cache=Path(GRADIO_CACHE))

    def _request(self, values: dict, session: str | None) -> logic.RunRequest:
        keys = ("classes", "preset", "ipc", "images_per_class", "config_name", "split", "captions_from", "seed",
                "strength", "guidance_scale", "steps")
        # Every control checked before anything is read or extracted; then again with the resolved dataset.
        logic.make_request(self.s.space, dataset="sample", **{k: values[k] for k in keys if k in values})
        logic.check_captions_source(values.get("captions_from"), allow_local_paths=self.s.local_paths)
        dataset = self._dataset(values, session)
        return logic.make_request(self.s.space, dataset=dataset, streaming=self._streams(dataset),
                                  **{k: values[k] for k in keys if k in values})

    def _streams(self, dataset: str) -> bool:
        return bool(self.s.space.defaults.get("stream_hub_datasets")) and logic.is_hub_id(dataset)

    def _tier(self, profile) -> str | None:
        return space_gpu.visitor_tier(profile) if self.s.zero_gpu else None

    def _stages(self, stage: str, values: dict, request: gr.Request, progress: gr.Progress, profile):
        """The per-class controller: checks on the CPU, plans the GPU calls, then one call per class.

        Yields status text; with the Prototypes tab, then the prototype view; last, when every class ran, the run's
        (config, source), while it still holds the session (a caller reads the run's files there). Stop (the button,
        `/stop`) and the session's end stop it between classes; it then writes nothing more.
        """
        s, session = self.s, request.session_hash
        with s.sessions.working(session, BUTTONS[stage], classes=True) as activity:
            stop = s.sessions.stop_flag(session)
            # 1. Everything that can be checked on the CPU: limits, the dataset, classes, IPC vs images.
            run = self._request(values, session)
            stages = logic.stages_of(stage)
            config = logic.distill_config(run, s.space, s.sessions.run_dir(session))
            source = logic.open_source(config, stream_dir=s.sessions.path(session) / "stream")
            # 2. The GPU calls, planned against the cap and the visitor's likely quota before the first one.
            decode = stage == "prototypes"
            estimate, quota = logic.class_seconds(run, stages, s.space), s.space.zerogpu
            todo = space_gpu.pending(config, source, stages, decode)
            tier = self._tier(profile)
            plan = space_gpu.plan_gpu_calls({source.class_names[c]: estimate for c in todo}, quota, tier)
            head = plan.describe(tier, quota) if s.has_gpu else ""
            yield head
            # 3. One GPU call per class, resumable, stoppable between calls.
            decoded, activity.total = {}, len(source.classes)
            updates = space_gpu.run_classes(config, source, stages, seconds=min(estimate, quota.max_call_seconds),
                                            placement=logic.placement(config), gpu_call=gpu_class, decode=decode,
                                            cache_dir=s.cache_dir, stop=stop.is_set)
            try:
                for update in updates:
                    activity.done = update.done
                    if update.stopped:
                        yield f"{head}\n\n{activity.stopped_message()}".strip()
                        return
                    progress((update.done, max(update.total, 1)), desc=update.message)
                    if update.result is not None:
                        decoded[update.result.label] = update.result.decoded
                    yield f"{head}\n\n{update.message}".strip()
            except gr.Error as err:  # ZeroGPU refused a call: the visitor's quota ran out mid-run
                if err.title not in QUOTA_ERRORS:
                    raise
                kept = [source.class_names[c] for c in source.classes[:activity.done]]
                raise gr.Error(space_gpu.quota_ran_out(str(err.message), kept, len(source.classes), tier),
                               title=err.title) from err
            # 4. The combined outputs, on the CPU.
            yield f"{head}\n\n{logic.finish_run(config, source, stages)}".strip()
            if decode:
                yield logic.prototype_view(config.output, decoded)
            yield config, source

    # events

    @_friendly
    def load_dataset(self, dataset=None, config_name=None, split=None, upload=None, classes=None,
                     images_per_class=None, request: gr.Request = None, progress=TRACK_TQDM):
        """Opens the dataset: its classes, per-class counts, and a preview of the selected classes."""
        s = self.s
        images = logic.check_selection(s.space, classes, images_per_class)
        config_name = logic.check_text(config_name, "configuration", logic.NAME) or None
        split = logic.check_text(split, "split", logic.NAME) or "train"
        with s.sessions.working(request.session_hash, "Load dataset"):
            source = self._dataset(locals(), request.session_hash)
            view = logic.dataset_overview(source, classes=[logic.check_text(c, "classes") for c in classes or []],
                                          images_per_class=images,
                                          num_default=min(s.space.defaults.get("num_classes", 5),
                                                          s.space.limits.max_classes),
                                          preview_per_class=s.space.defaults.get("preview_per_class", 6),
                                          config_name=config_name, split=split, streaming=self._streams(source),
                                          stream_dir=s.sessions.path(request.session_hash) / "stream")
        return gr.update(choices=view.class_names, value=view.selected), view.counts, view.preview, \
            s.public(view.message)

    @_friendly
    def caption(self, dataset=None, config_name=None, split=None, upload=None, classes=None, preset=None, ipc=None,
                images_per_class=None, captions_from=None, seed=None, strength=None, guidance_scale=None, steps=None,
                request: gr.Request = None, profile: gr.OAuthProfile | None = None, progress=TRACK_TQDM):
        """Captions every selected image (or loads published captions) and shows them."""
        status = ""
        for item in self._stages("caption", dict(locals()), request, progress, profile):
            if isinstance(item, str):
                status = item
                yield status, gr.skip(), gr.skip()
            else:
                config, source = item
                view = logic.caption_view(config, self.s.space.limits.max_caption_rows, source=source)
                yield f"{status}\n\n{view.rows} captions.", view.table_html, str(view.csv_path)

    @_friendly
    def prototypes(self, dataset=None, config_name=None, split=None, upload=None, classes=None, preset=None,
                   ipc=None, images_per_class=None, captions_from=None, seed=None, strength=None, guidance_scale=None,
                   steps=None, request: gr.Request = None, profile: gr.OAuthProfile | None = None,
                   progress=TRACK_TQDM):
        """Builds image and text prototypes and shows clusters, decoded prototypes and chosen descriptions."""
        status = ""
        for item in self._stages("prototypes", dict(locals()), request, progress, profile):
            if isinstance(item, str):
                status = item
                yield status, gr.skip(), gr.skip(), gr.skip(), gr.skip()
            elif isinstance(item, logic.PrototypeView):
                yield status, item.summary, item.clusters, item.images, item.highlighted

    @_friendly
    def generate(self, dataset=None, config_name=None, split=None, upload=None, classes=None, preset=None, ipc=None,
                 images_per_class=None, captions_from=None, seed=None, strength=None, guidance_scale=None, steps=None,
                 request: gr.Request = None, profile: gr.OAuthProfile | None = None, progress=TRACK_TQDM):
        """Runs every stage still missing and shows the distilled images, class by class, with their prompts."""
        status = ""
        for item in self._stages("generate", dict(locals()), request, progress, profile):
            if isinstance(item, str):
                status = item
                yield status, gr.skip(), gr.skip()
            else:
                run_dir = Path(item[0].output)
                yield status, logic.gallery(run_dir), str(run_dir / "preview.png")

    @_friendly
    def evaluate(self, epochs=None, random_baseline=False, request: gr.Request = None,
                 profile: gr.OAuthProfile | None = None, progress=TRACK_TQDM):
        """Trains a small student on the distilled set and plots its real-test accuracy per epoch."""
        if not logic.evaluation_available():
            return "Evaluation is not available in this installation of vldd.", None
        s = self.s
        settings = logic.eval_settings(s.space, epochs, random_baseline)
        run_dir = s.sessions.path(request.session_hash) / "run"
        logic.check_evaluable(run_dir)
        seconds = logic.estimate_eval_seconds(run_dir, settings, s.space)
        tier = self._tier(profile)
        space_gpu.plan_gpu_calls({"evaluation": seconds}, s.space.zerogpu, tier, shrink=EVAL_SHRINK)
        with s.sessions.working(request.session_hash, "Evaluate"):
            # The real images it needs, copied on the CPU first (a Hub source is streamed, capped per class).
            real = logic.prepare_eval_data(run_dir, s.sessions.path(request.session_hash) / "eval-real",
                                           settings["val_per_class"], bool(settings["baselines"]))
            view = gpu_evaluate(str(run_dir), {**settings, "real": str(real)},
                                min(seconds, s.space.zerogpu.max_call_seconds))
        return view.summary, str(view.plot_path)

    def suggest_repo(self, dataset=None, upload=None, ipc=None, profile: gr.OAuthProfile | None = None):
        """The repository name the Publish tab offers: <you>/<source>-vldd-ipc<N>."""
        source = Path(upload).stem if upload else dataset
        return logic.suggest_repo(source, ipc, profile.username if profile is not None else None)

    @_friendly
    def publish(self, repo_id=None, private=False, request: gr.Request = None,
                oauth_token: gr.OAuthToken | None = None):
        """Pushes this session's distilled set to the Hub with the signed-in visitor's token (never shown or
        logged)."""
        token = logic.push_token(oauth_token.token if oauth_token is not None else None, on_space=self.s.on_space)
        repo_id = logic.check_text(repo_id, "repository")
        with self.s.sessions.working(request.session_hash, "Publish"):
            view = logic.publish(self.s.sessions.path(request.session_hash) / "run", repo_id, bool(private), token)
        return view.message, view.snippet

    def stop(self, request: gr.Request):
        """Stops this session's run after the class it is on and says what it stopped (the button and `/stop`)."""
        return self.s.sessions.stop(request.session_hash, wait=self.s.stop_wait_seconds)

    def close_session(self, request: gr.Request):
        """The session ended (tab closed, client gone): its run stops after the current class, then its files go."""
        self.s.sessions.close(request.session_hash)


EVAL_SHRINK = "Use fewer epochs, or leave out the random baseline."


# --- tabs ------------------------------------------------------------------------------------------------------------

@dataclass
class RunInputs:
    """The controls every stage reads, created up front and rendered in the tab they belong to."""

    dataset: gr.Textbox
    config_name: gr.Textbox
    split: gr.Textbox
    upload: gr.File
    classes: gr.Dropdown
    preset: gr.Dropdown
    ipc: gr.Number
    images_per_class: gr.Number
    captions_from: gr.Textbox
    seed: gr.Number
    strength: gr.Slider
    guidance_scale: gr.Slider
    steps: gr.Number

    @classmethod
    def create(cls, space: logic.SpaceConfig, preset: str, zero_gpu: bool) -> "RunInputs":
        """Controls whose initial values come from the preset's config (`SpaceConfig.controls`), written once."""
        d, lim, v = space.defaults, space.limits, space.controls(preset)
        return cls(
            dataset=gr.Textbox(d.get("dataset", "sample"), label="Dataset", render=False,
                               info='"sample" (embedded shapes) or a Hub dataset id, e.g. frgfm/imagenette'),
            config_name=gr.Textbox(label="Configuration", placeholder="e.g. 160px", render=False),
            split=gr.Textbox(d.get("split", "train"), label="Split", render=False),
            upload=gr.File(label="…or upload a zip (one folder per class)", file_types=[".zip"], render=False),
            classes=gr.Dropdown([], multiselect=True, allow_custom_value=True, label="Classes", render=False,
                                info=f"at most {lim.max_classes}"),
            preset=gr.Dropdown([(p.label, name) for name, p in space.offered(zero_gpu).items()], value=preset,
                               label="Models (preset)", render=False),
            ipc=gr.Number(v["ipc"], precision=0, label="Images per class (IPC)", render=False,
                          info=f"at most {lim.max_ipc}"),
            images_per_class=gr.Number(v["images_per_class"], precision=0, label="Source images per class",
                                       render=False,
                                       info=f"the first N of each class; at most {lim.max_images_per_class}"),
            captions_from=gr.Textbox(label="…or reuse published captions (Hub dataset id)", render=False,
                                     placeholder="user/imagenette-vldd-captions"),
            seed=gr.Number(v["seed"], precision=0, label="Seed", render=False),
            strength=gr.Slider(0.05, 1.0, v["strength"], step=0.05, label="Strength", render=False),
            guidance_scale=gr.Slider(0.0, 20.0, v["guidance_scale"], step=0.5, label="Guidance scale", render=False),
            steps=gr.Number(v["steps"], precision=0, label="Inference steps", render=False,
                            info=f"strength × steps are denoised; at most {lim.max_steps}"),
        )

    def stage_inputs(self) -> list:
        return [self.dataset, self.config_name, self.split, self.upload, self.classes, self.preset, self.ipc,
                self.images_per_class, self.captions_from, self.seed, self.strength, self.guidance_scale,
                self.steps]


def _gpu_event(settings: AppSettings) -> dict:
    """GPU events share one pool of slots, sized in spaces_config.yaml for ZeroGPU or a local GPU."""
    return {"concurrency_limit": settings.space.concurrency(settings.zero_gpu)["gpu_concurrency"],
            "concurrency_id": "gpu"}


def dataset_tab(run: RunInputs, h: Handlers) -> None:
    with gr.Row():
        with gr.Column(scale=2):
            run.dataset.render()
            with gr.Row():
                run.config_name.render()
                run.split.render()
        run.upload.render()
    with gr.Row():
        run.classes.render()
        run.preset.render()
    with gr.Row():
        run.ipc.render()
        run.images_per_class.render()
    load = gr.Button("Load dataset", variant="primary")
    message = gr.Markdown(label="summary")
    preview = gr.Gallery(label="Preview (selected classes)", columns=6, height=320, object_fit="cover")
    counts = gr.Dataframe(headers=["class", "images", "used", "selected"], label="Counts", max_height=260)
    inputs = [run.dataset, run.config_name, run.split, run.upload, run.classes, run.images_per_class]
    load.click(h.load_dataset, inputs, [run.classes, counts, preview, message], api_name="load_dataset")


def captions_tab(run: RunInputs, status: gr.Markdown, h: Handlers) -> list:
    gr.Markdown("A vision-language model describes every source image, prompted with its class name.")
    run.captions_from.render()
    button = gr.Button("Caption", variant="primary")
    table = gr.HTML(label="Captions")
    download = gr.File(label="All captions (CSV)")
    return [button.click(h.caption, run.stage_inputs(), [status, table, download], api_name="caption",
                         **_gpu_event(h.s))]


def prototypes_tab(run: RunInputs, status: gr.Markdown, h: Handlers) -> list:
    gr.Markdown("Per class: outliers dropped (LOF), k-means on VAE latents (one cluster per distilled image), and "
                "the description that best covers each cluster's most frequent words (highlighted).")
    button = gr.Button("Build prototypes", variant="primary")
    summary = gr.Markdown(label="summary")
    clusters = gr.Dataframe(headers=["class", "cluster", "images", "outliers dropped (class)", "score", "fallback"],
                            label="Clusters", max_height=300)
    images = gr.Gallery(label="Prototypes, decoded", columns=8, height=240)
    texts = gr.HighlightedText(label="Chosen description per cluster", show_inline_category=False,
                               color_map={"top word": "orange", "cluster": "blue"})
    outputs = [status, summary, clusters, images, texts]
    return [button.click(h.prototypes, run.stage_inputs(), outputs, api_name="prototypes", **_gpu_event(h.s))]


def generate_tab(run: RunInputs, status: gr.Markdown, h: Handlers) -> list:
    with gr.Row():
        run.seed.render()
        dice = gr.Button("Random seed", scale=0)
        run.steps.render()
    with gr.Row():
        run.strength.render()
        run.guidance_scale.render()
    button = gr.Button("Generate (runs every stage still missing)", variant="primary")
    gallery = gr.Gallery(label="Distilled images (class by class; captions are the prompts)", columns=8, height=420,
                         elem_id="distilled-gallery")
    preview = gr.Image(label="One row per class", type="filepath", height=260)
    dice.click(lambda: int.from_bytes(os.urandom(3), "big"), None, run.seed, api_name="random_seed", queue=False)
    return [button.click(h.generate, run.stage_inputs(), [status, gallery, preview], api_name="generate",
                         **_gpu_event(h.s))]


def evaluate_tab(h: Handlers) -> list:
    e = h.s.space.evaluation
    gr.Markdown(f"A quick check, not the paper's protocol: a {e.get('student')} (width {e.get('student_width')}) "
                f"trained on the distilled images at {e.get('image_size')} px, tested on the first "
                f"{e.get('val_per_class', 50)} real validation images of each class.")
    if not logic.evaluation_available():
        gr.Markdown("**Evaluation is not available** in this installation of vldd.")
        return []
    with gr.Row():
        epochs = gr.Number(e.get("epochs", 30), precision=0, label="Epochs", info=f"at most {e.get('max_epochs')}")
        random_baseline = gr.Checkbox("random" in e.get("baselines", []), label="Also train on a random real subset",
                                      info="adds DD-Ranking's IOR: distilled minus random-subset accuracy, in points")
    button = gr.Button("Evaluate", variant="primary")
    summary = gr.Markdown(label="summary")
    plot = gr.Image(label="Accuracy per epoch", type="filepath")
    return [button.click(h.evaluate, [epochs, random_baseline], [summary, plot], api_name="evaluate",
                         **_gpu_event(h.s))]


def publish_tab(run: RunInputs, h: Handlers) -> tuple[gr.Textbox, list]:
    if h.s.oauth == "off":
        gr.Markdown("Sign-in is available on a Hugging Face Space, or locally after `hf auth login`.")
    else:
        gr.LoginButton()
    with gr.Row():
        repo = gr.Textbox(label="Dataset repository", scale=3, info="a bare name goes to your account")
        private = gr.Checkbox(False, label="Private", scale=1)
    button = gr.Button("Push to the Hub", variant="primary")
    message = gr.Markdown(label="message")
    snippet = gr.Code(language="python", label="Load it", interactive=False)
    button.click(h.publish, [repo, private], [message, snippet], api_name="push")
    return repo, [run.dataset, run.upload, run.ipc]


def build_demo(settings: AppSettings) -> gr.Blocks:
    """The whole app, for `settings` (see `default_settings`)."""
    logic.apply_pil_limits(settings.space.limits.uploads())  # PIL's own limits, lowered to the Space's (this process)
    h = Handlers(settings)
    space = settings.space
    ttl = int(space.sessions.get("ttl_hours", 6) * 3600)
    # delete_cache: Gradio's copies of uploads and outputs older than the session TTL go, checked hourly.
    with gr.Blocks(title="vldd: dataset distillation", delete_cache=(3600, ttl)) as demo:
        gr.Markdown("# vldd: dataset distillation with vision-language prototypes\n"
                    "Distill an image-classification dataset into a few synthetic images per class "
                    "([VLCP](https://arxiv.org/abs/2506.23580), ICCV 2025), then publish it to your account.")
        with gr.Row():
            status = gr.Markdown("Pick a dataset, then run the stages in order (or just Generate).", label="status",
                                 elem_id="status", line_breaks=True)
            stop = gr.Button("Stop", variant="stop", scale=0)
        run = RunInputs.create(space, space.preset_for(settings.has_gpu), settings.zero_gpu)
        with gr.Tabs():
            with gr.Tab("Dataset"):
                dataset_tab(run, h)
            with gr.Tab("Captions"):
                events = captions_tab(run, status, h)
            with gr.Tab("Prototypes"):
                events += prototypes_tab(run, status, h)
            with gr.Tab("Generate"):
                events += generate_tab(run, status, h)
            with gr.Tab("Evaluate"):
                events += evaluate_tab(h)
            with gr.Tab("Publish") as publish_page:
                repo, repo_inputs = publish_tab(run, h)
        # A stopped run ends after the class it is on; what finished stays, and the next run resumes from it.
        stop.click(h.stop, None, status, cancels=events, api_name="stop", queue=False)
        publish_page.select(h.suggest_repo, repo_inputs, repo, api_name="suggest_repo", queue=False)
        demo.load(h.suggest_repo, repo_inputs, repo, api_name="suggest_repo_on_load", queue=False)
        demo.unload(h.close_session)
    demo.handlers = h  # for tests and embedding: the bound handlers of this demo
    return demo.queue(max_size=space.queue.get("max_size", 20),
                      default_concurrency_limit=space.concurrency(settings.zero_gpu)["cpu_concurrency"])


def launch_kwargs(settings: AppSettings) -> dict:
    theme = gr.themes.Soft(font=["ui-sans-serif", "system-ui", "sans-serif"],
                           font_mono=["ui-monospace", "monospace"])  # no web fonts: works offline
    return {"theme": theme, "css": CSS, "allowed_paths": [str(settings.root)],
            "max_file_size": f"{settings.space.limits.max_upload_mb}mb"}


def preload(settings: AppSettings) -> None:
    """ZeroGPU: the models of every preset offered go to the GPU at start-up, in the main process, on its main
    thread (transformers' threaded weight loading would escape the thread-local CUDA emulation of `spaces`)."""
    os.environ.setdefault("HF_DEACTIVATE_ASYNC_LOAD", "1")
    space = settings.space
    for name in space.offered(True):
        request = logic.make_request(space, dataset="sample", classes=["0"], preset=name, ipc=1)
        settings.models.preload(logic.distill_config(request, space, settings.root / "preload"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="vldd's Gradio app")
    parser.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1; 0.0.0.0 on a Space)")
    parser.add_argument("--port", type=int, default=None, help="port (default 7860 or the next free one)")
    parser.add_argument("--share", action="store_true", help="also serve through a public gradio.live link")
    parser.add_argument("--allow-local-paths", action="store_true",
                        help="let visitors name folders of this machine as datasets even when the app is reachable "
                             "by others (--share, or --host other than localhost); off a Space, localhost alone "
                             "allows them by default")
    parser.add_argument("--config", default=str(HERE / "spaces_config.yaml"), help="the app's settings file")
    args = parser.parse_args(argv)
    settings = default_settings(args.config, host=args.host, share=args.share,
                                allow_local_paths=args.allow_local_paths)
    # Hub kernels: off unless a preset sets `hub_kernels: true` (and the Hub is online), for the lazily loaded ones too
    hub_kernels_for_process(any(p.config().hub_kernels for p in settings.space.presets.values()))
    if settings.zero_gpu:
        preload(settings)
    demo = build_demo(settings)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, **launch_kwargs(settings))


if __name__ == "__main__":
    main()
