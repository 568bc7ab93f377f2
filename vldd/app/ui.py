"""The Gradio Blocks: one tab per stage (Dataset, Captions, Prototypes, Generate, Evaluate, Publish), each from a
small builder below, wired to `Handlers`."""

from __future__ import annotations

import os
from dataclasses import dataclass

import gradio as gr

from .controls import MAX_GUIDANCE_SCALE, initial_controls
from .evaluation import evaluation_available
from .handlers import Handlers
from .runtime import AppSettings
from .settings import SpaceConfig
from .uploads import apply_pil_limits

CSS = """
.vldd-captions img { width: 56px; height: 56px; object-fit: cover; }
.vldd-captions td { vertical-align: top; padding: 2px 8px; }
"""

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
    def create(cls, space: SpaceConfig, preset: str, zero_gpu: bool) -> RunInputs:
        """Controls whose initial values come from the preset's config (`initial_controls`), written once."""
        d, lim, v = space.defaults, space.limits, initial_controls(space, preset)
        return cls(
            dataset=gr.Textbox(d["dataset"], label="Dataset", render=False,
                               info='"sample" (embedded shapes) or a Hub dataset id, e.g. frgfm/imagenette'),
            config_name=gr.Textbox(label="Configuration", placeholder="e.g. 160px", render=False),
            split=gr.Textbox(d["split"], label="Split", render=False),
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
            guidance_scale=gr.Slider(0.0, MAX_GUIDANCE_SCALE, v["guidance_scale"], step=0.5, label="Guidance scale",
                                     render=False),
            steps=gr.Number(v["steps"], precision=0, label="Inference steps", render=False,
                            info=f"strength × steps are denoised; at most {lim.max_steps}"),
        )

    def stage_inputs(self) -> list:
        return [self.dataset, self.config_name, self.split, self.upload, self.classes, self.preset, self.ipc,
                self.images_per_class, self.captions_from, self.seed, self.strength, self.guidance_scale,
                self.steps]


def _gpu_event(settings: AppSettings) -> dict:
    """GPU events share one pool of slots, sized in the settings (`queue`) for ZeroGPU or a local GPU."""
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
    gr.Markdown(f"A quick check, not the paper's protocol: a {e['student']} (width {e['student_width']}) "
                f"trained on the distilled images at {e['image_size']} px, tested on the first "
                f"{e['val_per_class']} real validation images of each class.")
    if not evaluation_available():
        gr.Markdown("**Evaluation is not available** in this installation of vldd.")
        return []
    with gr.Row():
        epochs = gr.Number(e["epochs"], precision=0, label="Epochs", info=f"at most {e['max_epochs']}")
        random_baseline = gr.Checkbox("random" in e["baselines"], label="Also train on a random real subset",
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
    apply_pil_limits(settings.space.limits.uploads())  # PIL's own limits, lowered to the Space's (this process)
    h = Handlers(settings)
    space = settings.space
    ttl = int(space.sessions["ttl_hours"] * 3600)
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
    return demo.queue(max_size=space.queue["max_size"],
                      default_concurrency_limit=space.concurrency(settings.zero_gpu)["cpu_concurrency"])


def launch_kwargs(settings: AppSettings) -> dict:
    theme = gr.themes.Soft(font=["ui-sans-serif", "system-ui", "sans-serif"],
                           font_mono=["ui-monospace", "monospace"])  # no web fonts: works offline
    return {"theme": theme, "css": CSS, "allowed_paths": [str(settings.root)],
            "max_file_size": f"{settings.space.limits.max_upload_mb}mb"}
