"""The `vldd` command: flags from the config dataclasses, one handler per command, plain-text reports."""

from .commands import main

__all__ = ["main"]
