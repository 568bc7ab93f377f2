"""The Gradio app and its Space, by concern:

    settings.py + settings.yaml   every app setting, once (presets, initial values, limits, queue, ZeroGPU, evaluation)
    controls.py    the run controls -> one checked DistillConfig, and its GPU-time estimate
    sources.py     the sample, a Hub id, an uploaded zip; the Dataset tab's overview; the run's source, opened once
    uploads.py     hostile zips, unpacked within limits
    sessions.py    one working directory per browser session, Stop, and what a visitor may read of a message
    models.py      captioners and pipelines loaded once per process, and where they go
    gpu.py         the per-class GPU controller: one bounded call per class, planned against ZeroGPU's quota
    views.py       what the Captions, Prototypes and Generate tabs show of a run
    evaluation.py  the Evaluate tab's quick evaluation
    publish.py     sign-in, the repository name offered, the push
    space_files.py a Space's README front matter and requirements.txt agree with its settings
    runtime.py     this process's settings (Space or not, ZeroGPU, flags) and the start-up preload
    handlers.py    the event handlers and the GPU functions ZeroGPU decorates
    ui.py          the Gradio Blocks
    flags.py       the start's flags, declared once (argparse only: the CLI adds them without importing the app)
    serve.py       `main` and `run`: `python app.py`, `python -m vldd.app`, `vldd app`

`import vldd.app` loads none of them (no Gradio, no torch).
"""


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    """Serves the app: the flags of `flags.add_flags` (--host, --port, --share, --allow-local-paths, --config,
    --cache-dir) parsed from `argv` (None: the process's arguments)."""
    from .serve import main as serve_main

    serve_main(argv, prog)


def serve(args) -> None:
    """Serves the app from flags already parsed (an `argparse.Namespace` of a parser given `flags.add_flags`)."""
    from .serve import run

    run(args)
