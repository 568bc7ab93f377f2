"""The app's event handlers: UI values in, UI values out, on the library and the app's plain modules.

The GPU work is in module-level functions (`gpu_class`, `gpu_evaluate`) that ZeroGPU decorates at import, with
plain picklable arguments; everything else runs in the main process, on the CPU.
"""

try:  # ZeroGPU needs `spaces` imported before anything touches CUDA
    import spaces
except ImportError:  # off a Space, without the package: a no-op stand-in
    spaces = None

import inspect
from functools import wraps
from pathlib import Path

import gradio as gr

from ..data.sources import is_hub_dataset
from ..hub.names import HubError
from ..jobs.distill import run_fingerprints
from . import evaluation, sources, views
from . import gpu as space_gpu
from . import publish as publishing
from .controls import NAME, check_selection, check_text, class_seconds, run_config, stages_of
from .gpu import LimitError
from .models import ModelCache, placement
from .runtime import GRADIO_CACHE, AppSettings
from .settings import CONTROL_FIELDS

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
    return space_gpu.run_class(job, ModelCache.shared(job.cache_dir))


@_gpu(duration=lambda run_dir, settings, seconds: seconds)
@_gradio_errors
def gpu_evaluate(run_dir: str, settings: dict, seconds: int) -> evaluation.EvalView:
    return evaluation.quick_evaluate(run_dir, settings)


# --- event handlers: UI values in, UI values out ---------------------------------------------------------------------

def _friendly(fn):
    """Shows what went wrong (limits, bad input, Hub refusals, errors from the GPU call) as a message instead of a
    stack trace, without the server's paths. Decorates `Handlers` methods (the first argument)."""
    expected = (gr.Error, ValueError, FileNotFoundError, HubError)

    def message(handlers: "Handlers", err: Exception) -> gr.Error:
        if isinstance(err, gr.Error):
            return gr.Error(handlers.s.public(str(err.message)), title=err.title)
        title = "Over a limit" if isinstance(err, LimitError) else "Error"
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


BUTTONS = {"caption": "Caption", "prototypes": "Build prototypes", "generate": "Generate"}
QUOTA_ERRORS = ("ZeroGPU quota exceeded", "ZeroGPU pending credits exceeded")  # titles of `spaces`' refusals


class Handlers:
    """The app's event handlers, bound to its settings (nothing global: several apps can run in one process)."""

    def __init__(self, settings: AppSettings):
        self.s = settings

    # helpers

    def _dataset(self, values: dict, session: str | None) -> str:
        s = self.s
        return sources.resolve_dataset(values["dataset"], values.get("upload"),
                                       upload_dir=s.sessions.upload_dir(session), allow_local_paths=s.local_paths,
                                       limits=s.space.limits.uploads(), uploads_cache=Path(GRADIO_CACHE))

    def _config(self, values: dict, session: str | None):
        """The run's `DistillConfig` from the stage inputs: every control checked before anything is read or
        extracted, then again with the resolved dataset."""
        keys = ("classes", "preset", "config_name", "split", "captions_from", *CONTROL_FIELDS)
        given = {k: values[k] for k in keys if k in values}
        run_dir = self.s.sessions.path(session) / "run"
        run_config(self.s.space, run_dir, dataset="sample", **given)
        sources.check_captions_source(values.get("captions_from"), allow_local_paths=self.s.local_paths)
        dataset = self._dataset(values, session)
        return run_config(self.s.space, run_dir, dataset=dataset, streaming=self._streams(dataset), **given)

    def _streams(self, dataset: str) -> bool:
        return bool(self.s.space.defaults["stream_hub_datasets"]) and is_hub_dataset(dataset)

    def _tier(self, profile) -> str | None:
        return space_gpu.visitor_tier(profile) if self.s.zero_gpu else None

    def _shown(self, stage: str, values: dict, show, outputs: int):
        """A stage button's updates: (status, `outputs` x unchanged) while `_stages` reports, then `show(status,
        item)` for each other item it yields (skipped when that returns None). `values`: the handler's arguments."""
        values = dict(values)
        status = ""
        for item in self._stages(stage, values, values["request"], values["progress"], values["profile"]):
            if isinstance(item, str):
                status = item
                yield status, *[gr.skip()] * outputs
            elif (shown := show(status, item)) is not None:
                yield shown

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
            config = self._config(values, session)
            s.sessions.run_dir(session)  # created, and the session marked active
            stages = stages_of(stage)
            source = sources.open_source(config, stream_dir=s.sessions.path(session) / "stream")
            # The stages' fingerprints, once a run (the VAE's weights are read here): which classes are done, and
            # what every class's call and the last, CPU-only, call reuse.
            fingerprints = run_fingerprints(config, source, s.cache_dir)
            # 2. The GPU calls, planned against the cap and the visitor's likely quota before the first one.
            decode = stage == "prototypes"
            estimate = class_seconds(config, stages, s.space.presets[values["preset"]].gpu_seconds)
            quota = s.space.zerogpu
            todo = space_gpu.pending(config, source, stages, fingerprints, decode)
            tier = self._tier(profile)
            plan = space_gpu.plan_gpu_calls({source.class_names[c]: estimate for c in todo}, quota, tier)
            head = plan.describe(tier, quota) if s.has_gpu else ""
            yield head
            # 3. One GPU call per class, resumable, stoppable between calls.
            decoded, activity.total = {}, len(source.classes)
            updates = space_gpu.run_classes(config, source, stages, fingerprints=fingerprints,
                                            seconds=min(estimate, quota.max_call_seconds),
                                            placement=placement(config), gpu_call=gpu_class, decode=decode,
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
            yield f"{head}\n\n{space_gpu.finish_run(config, source, stages, fingerprints)}".strip()
            if decode:
                yield views.prototype_view(config.output, decoded)
            yield config, source

    # events

    @_friendly
    def load_dataset(self, dataset=None, config_name=None, split=None, upload=None, classes=None,
                     images_per_class=None, request: gr.Request = None, progress=TRACK_TQDM):
        """Opens the dataset: its classes, per-class counts, and a preview of the selected classes."""
        s = self.s
        images = check_selection(s.space, classes, images_per_class)
        config_name = check_text(config_name, "configuration", NAME) or None
        split = check_text(split, "split", NAME) or "train"
        with s.sessions.working(request.session_hash, "Load dataset"):
            source = self._dataset(locals(), request.session_hash)
            view = sources.dataset_overview(source, classes=[check_text(c, "classes") for c in classes or []],
                                          images_per_class=images,
                                          num_default=min(s.space.defaults["num_classes"],
                                                          s.space.limits.max_classes),
                                          preview_per_class=s.space.defaults["preview_per_class"],
                                          config_name=config_name, split=split, streaming=self._streams(source),
                                          stream_dir=s.sessions.path(request.session_hash) / "stream")
        return gr.update(choices=view.class_names, value=view.selected), view.counts, view.preview, \
            s.public(view.message)

    @_friendly
    def caption(self, dataset=None, config_name=None, split=None, upload=None, classes=None, preset=None, ipc=None,
                images_per_class=None, captions_from=None, seed=None, strength=None, guidance_scale=None, steps=None,
                request: gr.Request = None, profile: gr.OAuthProfile | None = None, progress=TRACK_TQDM):
        """Captions every selected image (or loads published captions) and shows them."""
        def show(status, item):
            config, source = item
            view = views.caption_view(config, self.s.space.limits.max_caption_rows, source=source)
            return f"{status}\n\n{view.rows} captions.", view.table_html, str(view.csv_path)

        yield from self._shown("caption", locals(), show, 2)

    @_friendly
    def prototypes(self, dataset=None, config_name=None, split=None, upload=None, classes=None, preset=None,
                   ipc=None, images_per_class=None, captions_from=None, seed=None, strength=None, guidance_scale=None,
                   steps=None, request: gr.Request = None, profile: gr.OAuthProfile | None = None,
                   progress=TRACK_TQDM):
        """Builds image and text prototypes and shows clusters, decoded prototypes and chosen descriptions."""
        def show(status, item):  # the prototype view, sent as the last class finishes; not the run's result after it
            if isinstance(item, views.PrototypeView):
                return status, item.summary, item.clusters, item.images, item.highlighted
            return None

        yield from self._shown("prototypes", locals(), show, 4)

    @_friendly
    def generate(self, dataset=None, config_name=None, split=None, upload=None, classes=None, preset=None, ipc=None,
                 images_per_class=None, captions_from=None, seed=None, strength=None, guidance_scale=None, steps=None,
                 request: gr.Request = None, profile: gr.OAuthProfile | None = None, progress=TRACK_TQDM):
        """Runs every stage still missing and shows the distilled images, class by class, with their prompts."""
        def show(status, item):
            run_dir = Path(item[0].output)
            return status, views.gallery(run_dir), str(run_dir / "preview.png")

        yield from self._shown("generate", locals(), show, 2)

    @_friendly
    def evaluate(self, epochs=None, random_baseline=False, request: gr.Request = None,
                 profile: gr.OAuthProfile | None = None, progress=TRACK_TQDM):
        """Trains a small student on the distilled set and plots its real-test accuracy per epoch."""
        if not evaluation.evaluation_available():
            return "Evaluation is not available in this installation of vldd.", None
        s = self.s
        settings = evaluation.eval_settings(s.space, epochs, random_baseline)
        run_dir = s.sessions.path(request.session_hash) / "run"
        evaluation.check_evaluable(run_dir)
        seconds = evaluation.estimate_eval_seconds(run_dir, settings, s.space)
        tier = self._tier(profile)
        space_gpu.plan_gpu_calls({"evaluation": seconds}, s.space.zerogpu, tier, shrink=EVAL_SHRINK)
        with s.sessions.working(request.session_hash, "Evaluate"):
            # The real images it needs, copied on the CPU first (a Hub source is streamed, capped per class).
            real = evaluation.prepare_eval_data(run_dir, s.sessions.path(request.session_hash) / "eval-real",
                                           settings["val_per_class"], bool(settings["baselines"]))
            view = gpu_evaluate(str(run_dir), {**settings, "real": str(real)},
                                min(seconds, s.space.zerogpu.max_call_seconds))
        return view.summary, str(view.plot_path)

    def suggest_repo(self, dataset=None, upload=None, ipc=None, profile: gr.OAuthProfile | None = None):
        """The repository name the Publish tab offers: <you>/<source>-vldd-ipc<N>."""
        source = Path(upload).stem if upload else dataset
        return publishing.suggest_repo(source, ipc, profile.username if profile is not None else None)

    @_friendly
    def publish(self, repo_id=None, private=False, request: gr.Request = None,
                oauth_token: gr.OAuthToken | None = None):
        """Pushes this session's distilled set to the Hub with the signed-in visitor's token (never shown or
        logged)."""
        token = publishing.push_token(oauth_token.token if oauth_token is not None else None, on_space=self.s.on_space)
        repo_id = check_text(repo_id, "repository")
        with self.s.sessions.working(request.session_hash, "Publish"):
            view = publishing.publish(self.s.sessions.path(request.session_hash) / "run", repo_id, bool(private), token)
        return view.message, view.snippet

    def stop(self, request: gr.Request):
        """Stops this session's run after the class it is on and says what it stopped (the button and `/stop`)."""
        return self.s.sessions.stop(request.session_hash, wait=self.s.stop_wait_seconds)

    def close_session(self, request: gr.Request):
        """The session ended (tab closed, client gone): its run stops after the current class, then its files go."""
        self.s.sessions.close(request.session_hash)


EVAL_SHRINK = "Use fewer epochs, or leave out the random baseline."
