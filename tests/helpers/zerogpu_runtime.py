"""ZeroGPU on a CPU machine, for tests: a fake of the scheduler API and a launcher of app.py under `spaces`' emulation.

The scheduler (`spaces/zero/api.py`, docs/zerogpu.md) answers `/startup-report`, `/schedule`, `/allow` and
`/release`; it grants requests (refusing `/schedule` with 429 once `quota_calls` are used) and records each one (path
and query), so a test can read the durations asked.

`python tests/helpers/zerogpu_runtime.py [app.py's flags]` starts app.py's `main()` with `SPACES_ZERO_GPU=true` (set by the
caller, with `SPACES_ZERO_DEVICE_API_URL` pointing at the fake). Everything is the real `spaces` code except
`spaces.zero.torch.init` and `.move`, which need a real GPU in the forked worker and become no-ops, so the GPU
functions run on the CPU tensors the emulation registered as CUDA ones. Two hooks for the test, from the environment:
`VLDD_TEST_LOAD_LOG` (a file: every model load is appended as JSON with its process id and device) and
`VLDD_TEST_FAIL_CLASS` (a class whose GPU call raises a ValueError inside the worker).
"""

from __future__ import annotations

import json
import os
import runpy
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

ROOT = Path(__file__).resolve().parents[2]


class FakeScheduler:
    """The ZeroGPU device API; `requests` holds (path, query) in arrival order.

    It grants every `/schedule` request until `quota_calls` (None: no limit) have been granted, then answers 429 with
    no quota left, as ZeroGPU does when a visitor's daily quota is used up.
    """

    def __init__(self):
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.quota_calls: int | None = None
        scheduler = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                url = urlparse(self.path)
                asked = len(scheduler.durations())  # /schedule requests before this one
                scheduler.requests.append((url.path, {k: v[0] for k, v in parse_qs(url.query).items()}))
                body, status = b"", 200
                if url.path == "/schedule" and scheduler.quota_calls is not None and asked >= scheduler.quota_calls:
                    body, status = json.dumps({"left": 0, "wait": 3600}).encode(), 429
                elif url.path == "/schedule":
                    body = json.dumps({"idle": True, "nvidiaIndex": 0, "nvidiaUUID": "GPU-fake-0",
                                       "allowToken": f"allow-{len(scheduler.requests)}"}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def durations(self) -> list[int]:
        return [int(q["durationSeconds"]) for path, q in self.requests if path == "/schedule"]

    def close(self) -> None:
        self.server.shutdown()


def _install_test_hooks() -> None:
    from vldd.app import gpu as app_gpu
    from vldd.stages import caption as captioning
    from vldd.stages import generate as generation

    log = os.environ.get("VLDD_TEST_LOAD_LOG")
    if log:
        def logged(load, kind):
            def wrapper(*args, **kwargs):
                with open(log, "a") as f:
                    f.write(json.dumps({"kind": kind, "pid": os.getpid(), "device": str(kwargs.get("device"))}) + "\n")
                return load(*args, **kwargs)
            return wrapper
        captioning.load_captioner = logged(captioning.load_captioner, "captioner")
        generation.load_pipeline = logged(generation.load_pipeline, "pipeline")

    fail = os.environ.get("VLDD_TEST_FAIL_CLASS")
    if fail:
        run_class = app_gpu.run_class

        def failing(job, models):
            if job.source.class_names[job.source.classes[0]] == fail:
                raise ValueError(f"class {fail!r} failed inside the GPU call (pid {os.getpid()})")
            return run_class(job, models)
        app_gpu.run_class = failing


def main() -> None:
    import spaces  # noqa: F401  (first, as on a Space: it installs the CUDA emulation)
    import spaces.zero.torch as zero_torch

    zero_torch.init = lambda *args, **kwargs: None  # need real CUDA in the forked worker
    zero_torch.move = lambda *args, **kwargs: None
    _install_test_hooks()
    sys.argv = [str(ROOT / "app.py"), *sys.argv[1:]]
    runpy.run_path(str(ROOT / "app.py"), run_name="__main__")


if __name__ == "__main__":
    main()
