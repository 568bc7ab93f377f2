"""vldd's Gradio app, as a Hugging Face Space runs it (README.md's front matter names this file): the app is the
`vldd.app` package; this file reads the Space's spaces_config.yaml on top of the app's settings."""

try:  # ZeroGPU needs `spaces` imported before anything touches CUDA
    import spaces  # noqa: F401
except ImportError:  # off a Space, without the package
    pass

import sys
from pathlib import Path

from vldd.app.serve import main

if __name__ == "__main__":
    main(["--config", str(Path(__file__).resolve().parent / "spaces_config.yaml"), *sys.argv[1:]])
