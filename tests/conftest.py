"""Test configuration: everything offline, tiny models built once per session."""

import contextlib
import os
from pathlib import Path

# Set before huggingface_hub / datasets / gradio are imported anywhere, so the README's test command behaves the
# same on every machine: no test touches the internet.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_UPDATE_DOWNLOAD_COUNTS", "0")
os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.pop("SPACES_ZERO_GPU", None)  # `import spaces` asserts when set off a Space

import pytest  # noqa: E402
import torch  # noqa: E402

# The tiny models are dominated by per-op overhead; one thread avoids oversubscribing small CI machines.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _no_process_wide_kernel_switch():
    """Every test starts with USE_HUB_KERNELS unset, as on a fresh machine, and leaves it so: the CLI sets it for its
    process (`vldd.cli.hub_kernels_for_process`), and in-process CLI tests must not pass that on to later tests."""
    os.environ.pop("USE_HUB_KERNELS", None)
    yield
    os.environ.pop("USE_HUB_KERNELS", None)


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory):
    """A cache directory holding the tiny models, built once for the whole session."""
    from vldd.tiny import build_tiny_models

    cache = tmp_path_factory.mktemp("vldd-cache")
    build_tiny_models(cache)
    return cache


from hub_fixtures import hub_server  # noqa: E402, F401  (the local Hub test server, for any test that publishes)


def tiny_overrides(output, **extra):
    """A small, fast tiny-preset run: 2 classes x IPC 3 from 12 images each, 10-step schedule."""
    values = {"preset": "tiny", "output": str(output), "ipc": 3,
              "data": {"classes": ["circle", "stripes"], "max_images_per_class": 12},
              "generation": {"num_inference_steps": 10}}
    for key, value in extra.items():
        if isinstance(value, dict):
            values.setdefault(key, {}).update(value)
        else:
            values[key] = value
    return values


def wait_for(ready, process, timeout: float = 300) -> bool:
    """Polls `ready()` until it is true (True), the subprocess ended (False) or `timeout` seconds passed (False)."""
    import time

    start = time.time()
    while time.time() - start < timeout:
        if ready():
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.02)
    return False


def image_folder(root, names, size: int = 16, per_class: int = 6):
    """An image folder of `names` classes, `per_class` flat-colour PNGs each (colour by class and index)."""
    import numpy as np
    from PIL import Image

    for c, name in enumerate(names):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.full((size, size, 3), 40 * c + 5 * i, np.uint8)).save(folder / f"{i}.png")
    return root


@contextlib.contextmanager
def running_app(command: list[str], env: dict, cwd, timeout: float = 240):
    """Runs an app server (`command` + `--port N`) in its own process group, yields its URL and pid once the port
    answers, and kills the whole group afterwards (spaces' forked GPU workers included). Fails with the app's log
    when it does not start."""
    import os
    import signal
    import socket
    import subprocess

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log_path = Path(cwd) / "app.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen([*command, "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                                   cwd=cwd, start_new_session=True)
        try:
            def answers() -> bool:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    return True
                except OSError:
                    return False

            if not wait_for(answers, process, timeout):
                pytest.fail(f"the app did not start:\n{log_path.read_text()[-4000:]}")
            yield f"http://127.0.0.1:{port}/", process.pid
        finally:
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(30)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
