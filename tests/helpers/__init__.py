"""What several test files share: small runs and image folders, and waiting on and stopping subprocesses. The local
Hub server (`hub_server`, `hub_fixtures`) and the ZeroGPU emulation (`zerogpu_runtime`) are modules beside it."""

import contextlib
from pathlib import Path

import pytest


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
