"""Starts the app: `python app.py` (the Space), `python -m vldd.app` and `vldd app` take the flags of `flags.py`."""

from __future__ import annotations

import argparse
import os

from ..core.devices import hub_kernels_for_process
from .flags import add_flags
from .runtime import default_settings, preload
from .ui import build_demo, launch_kwargs

DESCRIPTION = "serve vldd's Gradio app (the same app that runs as a Hugging Face Space)"


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    """Parses `argv` (None: the process's arguments) and serves the app until Ctrl+C."""
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION)
    add_flags(parser)
    run(parser.parse_args(argv))


def run(args: argparse.Namespace) -> None:
    """Builds the app from parsed flags (`flags.add_flags`) and serves it until Ctrl+C."""
    if args.cache_dir:  # a subprocess of the app (a ZeroGPU worker) finds it too
        os.environ["VLDD_CACHE"] = args.cache_dir
    settings = default_settings(args.config, host=args.host, share=args.share,
                                allow_local_paths=args.allow_local_paths, cache_dir=args.cache_dir)
    # Hub kernels: off unless a preset sets `hub_kernels: true` (and the Hub is online), for the lazily loaded ones too
    hub_kernels_for_process(any(p.config().hub_kernels for p in settings.space.presets.values()))
    if settings.zero_gpu:
        preload(settings)
    demo = build_demo(settings)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, **launch_kwargs(settings))
