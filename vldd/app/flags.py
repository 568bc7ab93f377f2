"""The flags of the app's start (`python app.py`, `python -m vldd.app`, `vldd app`), declared once; argparse only,
so the CLI can add them without importing the app."""

from __future__ import annotations

import argparse


def add_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1; 0.0.0.0 serves the "
                        "network, as on a Space)")
    parser.add_argument("--port", type=int, default=None, help="port (default 7860, or the next free one)")
    parser.add_argument("--share", action="store_true", help="also serve through a temporary public gradio.live link")
    parser.add_argument("--allow-local-paths", action="store_true",
                        help="let visitors name folders of this machine as datasets even when the app is reachable "
                             "by others (--share, or --host other than localhost); off a Space, localhost alone "
                             "allows them by default")
    parser.add_argument("--config", default=None,
                        help="a settings file read on top of the app's own (vldd/app/settings.yaml), same layout; a "
                             "Space's is its spaces_config.yaml")
    parser.add_argument("--cache-dir", default=None,
                        help="where the tiny preset's models are built (default: $VLDD_CACHE or ~/.cache/vldd)")
