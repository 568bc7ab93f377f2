"""`python -m vldd.app [--host ...] [--port ...]`: serves the Gradio app (see `vldd.app.serve`)."""

from .serve import main

main(prog="python -m vldd.app")
