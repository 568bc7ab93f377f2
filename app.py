"""vldd's Gradio app: distill a dataset stage by stage, then publish it to your Hugging Face account.

One tab per stage (Dataset, Captions, Prototypes, Generate, Evaluate, Publish), each from a small builder below;
what they do lives in `vldd.app_logic` (plain functions) and the library. Runs as a Hugging Face Space (ZeroGPU or
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
from dataclasses import dataclass, field, replace
from functools import wraps
from pathlib import Path

import gradio as gr

from vldd import app_logic as logic
from vldd.hub import HubError

HERE = Path(__file__).resolve().parent
ON_SPACE = os.getenv("SYSTEM") == "spaces"
ZERO_GPU = os.getenv("SPACES_ZERO_GPU", "").lower() in ("1", "t", "true")
CSS = """
.vldd-captions img { width: 56px; height: 56px; object-fit: cover; }
.vldd-captions td { vertical-align: top; padding: 2px 8px; }
"""


@dataclass
class AppSettings:
    space: logic.SpaceConfig
    root: Path  # per-session run directories live here
    cache_dir: str | None = None  # where tiny:// models are built
    on_space: bool = ON_SPACE
    oauth: str = "off"  # "space", "local" or "off" (see logic.oauth_mode)
    has_gpu: bool = False
    models: logic.ModelCache = field(default_factory=logic.ModelCache)

    @property
    def sessions(self) -> logic.Sessions:
        return logic.Sessions(self.root, self.space.sessions.get("ttl_hours", 6))


def default_settings(config: str | Path = HERE / "spaces_config.yaml") -> AppSettings:
    """Settings from spaces_config.yaml and the environment (VLDD_APP_ROOT, VLDD_CACHE)."""
    import torch

    cache_dir = os.environ.get("VLDD_CACHE")
    return AppSettings(
        space=logic.load_space_config(config),
        root=Path(os.environ.get("VLDD_APP_ROOT", Path(tempfile.gettempdir()) / "vldd-app")),
        cache_dir=cache_dir, oauth=logic.oauth_mode(ON_SPACE),
        has_gpu=ZERO_GPU or torch.cuda.is_available(), models=logic.ModelCache(cache_dir))


TRACK_TQDM = gr.Progress(track_tqdm=True)  # marks a handler's progress argument; Gradio passes a fresh tracker
S: AppSettings | None = None  # the running app's settings (build_demo sets them; GPU functions read them)


# --- GPU work: only inside @spaces.GPU, with plain arguments ---------------------------------------------------------

def _gpu(duration):
    return spaces.GPU(duration=duration) if spaces is not None else (lambda fn: fn)


def _run_seconds(run_dir: str, request: logic.RunRequest, stages: tuple[str, ...]) -> int:
    return logic.estimate_run_seconds(request, stages, S.space) + (5 if stages == logic.STAGES_OF["prototypes"] else 0)


@_gpu(duration=_run_seconds)
def gpu_run(run_dir: str, request: logic.RunRequest, stages: tuple[str, ...]):
    """Runs `stages` class by class (one update per class); the prototype stage ends with its decoded view."""
    config = logic.distill_config(request, S.space, run_dir)
    for update in logic.run_stages(config, stages, S.models):
        yield replace(update, result=None)
    if stages == logic.STAGES_OF["prototypes"]:
        yield logic.prototype_view(run_dir, S.models.pipeline(config).vae)


def _eval_seconds(run_dir: str, settings: dict) -> int:
    return logic.estimate_eval_seconds(run_dir, settings, S.space)


@_gpu(duration=_eval_seconds)
def gpu_evaluate(run_dir: str, settings: dict) -> logic.EvalView:
    return logic.quick_evaluate(run_dir, settings)


# --- event handlers: UI values in, UI values out ---------------------------------------------------------------------

def _friendly(fn):
    """Shows what went wrong (limits, bad input, Hub refusals) as a message instead of a stack trace."""
    expected = (ValueError, FileNotFoundError, HubError)

    def message(err: Exception) -> gr.Error:
        return gr.Error(str(err), title="Over a limit" if isinstance(err, logic.LimitError) else "Error")

    if inspect.isgeneratorfunction(fn):
        @wraps(fn)
        def stream(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except expected as err:
                raise message(err) from err
        return stream

    @wraps(fn)
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except expected as err:
            raise message(err) from err
    return call


def _dataset(values: dict, session: str | None) -> str:
    return logic.resolve_dataset(values["dataset"], values.get("upload"), upload_dir=S.sessions.upload_dir(session),
                                 allow_local_paths=not S.on_space, max_upload_mb=S.space.limits.max_upload_mb)


def _request(values: dict, session: str | None) -> logic.RunRequest:
    dataset = _dataset(values, session)
    keys = ("classes", "preset", "ipc", "images_per_class", "config_name", "split", "captions_from", "seed",
            "strength", "guidance_scale", "steps")
    return logic.make_request(S.space, dataset=dataset, streaming=_streams(dataset),
                              **{k: values[k] for k in keys if k in values})


def _streams(dataset: str) -> bool:
    return bool(S.space.defaults.get("stream_hub_datasets")) and logic.is_hub_id(dataset)


def _stages(stage: str, values: dict, request: gr.Request, progress: gr.Progress):
    """Runs a tab's stages on the GPU, yielding status text; the last item is the prototype view, if any."""
    run = _request(values, request.session_hash)
    stages = logic.STAGES_OF[stage]
    logic.check_gpu_budget(_run_seconds("", run, stages), S.space)
    run_dir = S.sessions.run_dir(request.session_hash)
    for update in gpu_run(str(run_dir), run, stages):
        if isinstance(update, logic.StageUpdate):
            progress((update.done, max(update.total, 1)), desc=update.message)
            yield update.message
        else:
            yield update


@_friendly
def load_dataset(dataset=None, config_name=None, split=None, upload=None, classes=None, images_per_class=None,
                 request: gr.Request = None, progress=TRACK_TQDM):
    """Opens the dataset: its classes, per-class counts, and a preview of the selected classes."""
    images = logic.check_selection(S.space, classes, images_per_class)
    defaults = S.space.defaults
    source = _dataset(locals(), request.session_hash)
    view = logic.dataset_overview(source, classes=classes, images_per_class=images,
                                  num_default=min(defaults.get("num_classes", 5), S.space.limits.max_classes),
                                  preview_per_class=defaults.get("preview_per_class", 6),
                                  config_name=(config_name or "").strip() or None, split=(split or "train").strip(),
                                  streaming=_streams(source))
    return gr.update(choices=view.class_names, value=view.selected), view.counts, view.preview, view.message


@_friendly
def caption(dataset=None, config_name=None, split=None, upload=None, classes=None, preset=None, ipc=None,
            images_per_class=None, captions_from=None, seed=None, strength=None, guidance_scale=None, steps=None,
            request: gr.Request = None, progress=TRACK_TQDM):
    """Captions every selected image (or loads published captions) and shows them."""
    values = dict(locals())
    for status in _stages("caption", values, request, progress):
        yield status, gr.skip(), gr.skip()
    run_dir = S.sessions.run_dir(request.session_hash)
    view = logic.caption_view(logic.distill_config(_request(values, request.session_hash), S.space, run_dir),
                              S.space.limits.max_caption_rows)
    yield f"{status}\n\n{view.rows} captions.", view.table_html, str(view.csv_path)


@_friendly
def prototypes(dataset=None, config_name=None, split=None, upload=None, classes=None, preset=None, ipc=None,
               images_per_class=None, captions_from=None, seed=None, strength=None, guidance_scale=None, steps=None,
               request: gr.Request = None, progress=TRACK_TQDM):
    """Builds image and text prototypes and shows clusters, decoded prototypes and chosen descriptions."""
    status = ""
    for item in _stages("prototypes", locals(), request, progress):
        if isinstance(item, str):
            status = item
            yield status, gr.skip(), gr.skip(), gr.skip(), gr.skip()
        else:
            yield status, item.summary, item.clusters, item.images, item.highlighted


@_friendly
def generate(dataset=None, config_name=None, split=None, upload=None, classes=None, preset=None, ipc=None,
             images_per_class=None, captions_from=None, seed=None, strength=None, guidance_scale=None, steps=None,
             request: gr.Request = None, progress=TRACK_TQDM):
    """Runs every stage still missing and shows the distilled images, class by class, with their prompts."""
    for status in _stages("generate", locals(), request, progress):
        yield status, gr.skip(), gr.skip()
    run_dir = S.sessions.run_dir(request.session_hash)
    yield status, logic.gallery(run_dir), str(run_dir / "preview.png")


@_friendly
def evaluate(epochs=None, random_baseline=False, request: gr.Request = None, progress=TRACK_TQDM):
    """Trains a small student on the distilled set and plots its real-test accuracy per epoch."""
    if not logic.evaluation_available():
        return "Evaluation is not available in this installation of vldd.", None
    settings = logic.eval_settings(S.space, epochs, random_baseline)
    run_dir = str(S.sessions.run_dir(request.session_hash))
    logic.check_gpu_budget(_eval_seconds(run_dir, settings), S.space)
    view = gpu_evaluate(run_dir, settings)
    return view.summary, str(view.plot_path)


def suggest_repo(dataset=None, upload=None, ipc=None, profile: gr.OAuthProfile | None = None):
    """The repository name the Publish tab offers: <you>/<source>-vldd-ipc<N>."""
    source = Path(upload).stem if upload else dataset
    return logic.suggest_repo(source, ipc, profile.username if profile is not None else None)


@_friendly
def publish(repo_id=None, private=False, request: gr.Request = None, oauth_token: gr.OAuthToken | None = None):
    """Pushes this session's distilled set to the Hub with the signed-in visitor's token (never shown or logged)."""
    token = logic.push_token(oauth_token.token if oauth_token is not None else None, on_space=S.on_space)
    view = logic.publish(S.sessions.path(request.session_hash) / "run", repo_id, bool(private), token)
    return view.message, view.snippet


def close_session(request: gr.Request):
    S.sessions.close(request.session_hash)


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
    def create(cls, space: logic.SpaceConfig, has_gpu: bool) -> "RunInputs":
        d, lim = space.defaults, space.limits
        return cls(
            dataset=gr.Textbox(d.get("dataset", "sample"), label="Dataset", render=False,
                               info='"sample" (embedded shapes) or a Hub dataset id, e.g. frgfm/imagenette'),
            config_name=gr.Textbox(label="Configuration", placeholder="e.g. 160px", render=False),
            split=gr.Textbox(d.get("split", "train"), label="Split", render=False),
            upload=gr.File(label="…or upload a zip (one folder per class)", file_types=[".zip"], render=False),
            classes=gr.Dropdown([], multiselect=True, allow_custom_value=True, label="Classes", render=False,
                                info=f"at most {lim.max_classes}"),
            preset=gr.Dropdown([(p.label, name) for name, p in space.presets.items()],
                               value=space.preset_for(has_gpu), label="Models (preset)", render=False),
            ipc=gr.Number(d.get("ipc", 10), precision=0, label="Images per class (IPC)", render=False,
                          info=f"at most {lim.max_ipc}"),
            images_per_class=gr.Number(d.get("images_per_class", lim.max_images_per_class), precision=0,
                                       label="Source images per class", render=False,
                                       info=f"the first N of each class; at most {lim.max_images_per_class}"),
            captions_from=gr.Textbox(label="…or reuse published captions (Hub dataset id)", render=False,
                                     placeholder="user/imagenette-vldd-captions"),
            seed=gr.Number(d.get("seed", 0), precision=0, label="Seed", render=False),
            strength=gr.Slider(0.05, 1.0, d.get("strength", 0.7), step=0.05, label="Strength", render=False),
            guidance_scale=gr.Slider(0.0, 20.0, d.get("guidance_scale", 10.0), step=0.5, label="Guidance scale",
                                     render=False),
            steps=gr.Number(d.get("steps", 50), precision=0, label="Inference steps", render=False,
                            info=f"strength × steps are denoised; at most {lim.max_steps}"),
        )

    def stage_inputs(self) -> list:
        return [self.dataset, self.config_name, self.split, self.upload, self.classes, self.preset, self.ipc,
                self.images_per_class, self.captions_from, self.seed, self.strength, self.guidance_scale,
                self.steps]


def _gpu_event() -> dict:
    """GPU events share one queue slot pool, sized in spaces_config.yaml."""
    return {"concurrency_limit": S.space.queue.get("gpu_concurrency", 1), "concurrency_id": "gpu"}


def dataset_tab(run: RunInputs) -> None:
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
    load.click(load_dataset, inputs, [run.classes, counts, preview, message], api_name="load_dataset")


def captions_tab(run: RunInputs, status: gr.Markdown) -> list:
    gr.Markdown("A vision-language model describes every source image, prompted with its class name.")
    run.captions_from.render()
    button = gr.Button("Caption", variant="primary")
    table = gr.HTML(label="Captions")
    download = gr.File(label="All captions (CSV)")
    return [button.click(caption, run.stage_inputs(), [status, table, download], api_name="caption", **_gpu_event())]


def prototypes_tab(run: RunInputs, status: gr.Markdown) -> list:
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
    return [button.click(prototypes, run.stage_inputs(), outputs, api_name="prototypes", **_gpu_event())]


def generate_tab(run: RunInputs, status: gr.Markdown) -> list:
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
    return [button.click(generate, run.stage_inputs(), [status, gallery, preview], api_name="generate", **_gpu_event())]


def evaluate_tab(space: logic.SpaceConfig) -> list:
    e = space.evaluation
    gr.Markdown(f"A quick check, not the paper's protocol: a {e.get('student')} (width {e.get('student_width')}) "
                f"trained on the distilled images at {e.get('image_size')} px, tested on the real validation split.")
    if not logic.evaluation_available():
        gr.Markdown("**Evaluation is not available** in this installation of vldd.")
        return []
    with gr.Row():
        epochs = gr.Number(e.get("epochs", 30), precision=0, label="Epochs", info=f"at most {e.get('max_epochs')}")
        random_baseline = gr.Checkbox("random" in e.get("baselines", []), label="Also train on a random real subset")
    button = gr.Button("Evaluate", variant="primary")
    summary = gr.Markdown(label="summary")
    plot = gr.Image(label="Accuracy per epoch", type="filepath")
    return [button.click(evaluate, [epochs, random_baseline], [summary, plot], api_name="evaluate", **_gpu_event())]


def publish_tab(run: RunInputs, oauth: str) -> tuple[gr.Textbox, list]:
    if oauth == "off":
        gr.Markdown("Sign-in is available on a Hugging Face Space, or locally after `hf auth login`.")
    else:
        gr.LoginButton()
    with gr.Row():
        repo = gr.Textbox(label="Dataset repository", scale=3, info="a bare name goes to your account")
        private = gr.Checkbox(False, label="Private", scale=1)
    button = gr.Button("Push to the Hub", variant="primary")
    message = gr.Markdown(label="message")
    snippet = gr.Code(language="python", label="Load it", interactive=False)
    button.click(publish, [repo, private], [message, snippet], api_name="push")
    return repo, [run.dataset, run.upload, run.ipc]


def build_demo(settings: AppSettings | None = None) -> gr.Blocks:
    """The whole app; `settings` default to spaces_config.yaml and the environment."""
    global S
    S = settings or default_settings()
    with gr.Blocks(title="vldd: dataset distillation") as demo:
        gr.Markdown("# vldd: dataset distillation with vision-language prototypes\n"
                    "Distill an image-classification dataset into a few synthetic images per class "
                    "([VLCP](https://arxiv.org/abs/2506.23580), ICCV 2025), then publish it to your account.")
        with gr.Row():
            status = gr.Markdown("Pick a dataset, then run the stages in order (or just Generate).", label="status", elem_id="status",
                                 line_breaks=True)
            stop = gr.Button("Stop", variant="stop", scale=0)
        run = RunInputs.create(S.space, S.has_gpu)
        with gr.Tabs():
            with gr.Tab("Dataset"):
                dataset_tab(run)
            with gr.Tab("Captions"):
                events = captions_tab(run, status)
            with gr.Tab("Prototypes"):
                events += prototypes_tab(run, status)
            with gr.Tab("Generate"):
                events += generate_tab(run, status)
            with gr.Tab("Evaluate"):
                events += evaluate_tab(S.space)
            with gr.Tab("Publish") as publish_page:
                repo, repo_inputs = publish_tab(run, S.oauth)
        # A stopped run ends after the class it is on; what finished stays, and the next run resumes from it.
        stop.click(lambda: "Stopped. Finished classes are kept; run again to resume.", None, status,
                   cancels=events, api_name="stop", queue=False)
        publish_page.select(suggest_repo, repo_inputs, repo, api_name="suggest_repo", queue=False)
        demo.load(suggest_repo, repo_inputs, repo, api_name="suggest_repo_on_load", queue=False)
        demo.unload(close_session)
    queue = S.space.queue
    return demo.queue(max_size=queue.get("max_size", 20), default_concurrency_limit=queue.get("cpu_concurrency", 1))


def launch_kwargs(settings: AppSettings) -> dict:
    theme = gr.themes.Soft(font=["ui-sans-serif", "system-ui", "sans-serif"],
                           font_mono=["ui-monospace", "monospace"])  # no web fonts: works offline
    return {"theme": theme, "css": CSS, "allowed_paths": [str(settings.root)],
            "max_file_size": f"{settings.space.limits.max_upload_mb}mb"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="vldd's Gradio app")
    parser.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1; 0.0.0.0 on a Space)")
    parser.add_argument("--port", type=int, default=None, help="port (default 7860 or the next free one)")
    parser.add_argument("--share", action="store_true", help="also serve through a public gradio.live link")
    args = parser.parse_args(argv)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, **launch_kwargs(S))


def _preloaded(settings: AppSettings) -> AppSettings:
    """ZeroGPU: the default preset's models go to the GPU once, at start-up, in the main process."""
    space = settings.space
    request = logic.make_request(space, dataset="sample", classes=["0"], preset=space.preset_for(True), ipc=1)
    settings.models.preload(logic.distill_config(request, space, settings.root / "preload"))
    return settings


demo = build_demo(_preloaded(default_settings()) if ZERO_GPU else None)

if __name__ == "__main__":
    main()
