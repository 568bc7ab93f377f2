"""Starts the app: `python app.py` (the Space), `python -m vldd.app` and `vldd app` parse the same flags here."""

from __future__ import annotations

import argparse
import os

from .runtime import default_settings, hub_kernels_for_process, preload
from .ui import build_demo, launch_kwargs


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="vldd's Gradio app (the same app that runs as a Hugging "
                                     "Face Space); settings: vldd/app/settings.yaml, then --config")
    parser.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1; 0.0.0.0 on a Space)")
    parser.add_argument("--port", type=int, default=None, help="port (default 7860 or the next free one)")
    parser.add_argument("--share", action="store_true", help="also serve through a public gradio.live link")
    parser.add_argument("--allow-local-paths", action="store_true",
                        help="let visitors name folders of this machine as datasets even when the app is reachable "
                             "by others (--share, or --host other than localhost); off a Space, localhost alone "
                             "allows them by default")
    parser.add_argument("--config", default=None,
                        help="a settings file read on top of the app's own (a Space's spaces_config.yaml: any "
                             "setting of vldd/app/settings.yaml it changes)")
    parser.add_argument("--cache-dir", default=None,
                        help="where the tiny preset's models are built (default: $VLDD_CACHE or ~/.cache/vldd)")
    return parser


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    """Parses `argv` (None: the process's arguments), builds the app and serves it until Ctrl+C."""
    args = build_parser(prog).parse_args(argv)
    if args.cache_dir:  # a subprocess of the app (a ZeroGPU worker) finds it too
        os.environ["VLDD_CACHE"] = args.cache_dir
    settings = default_settings(args.config, host=args.host, share=args.share,
                                allow_local_paths=args.allow_local_paths, cache_dir=args.cache_dir)
    # Hub kernels: off unless a preset sets `hub_kernels: true` (and the Hub is online), for the lazily loaded ones too
    hub_kernels_for_process(settings)
    if settings.zero_gpu:
        preload(settings)
    demo = build_demo(settings)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, **launch_kwargs(settings))
