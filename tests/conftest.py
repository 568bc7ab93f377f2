"""Test configuration: everything offline, tiny models built once per session."""

import os

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
    process (`vldd.cli.commands.hub_kernels_for_process`), and in-process CLI tests must not pass that on to later tests."""
    os.environ.pop("USE_HUB_KERNELS", None)
    yield
    os.environ.pop("USE_HUB_KERNELS", None)


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory):
    """A cache directory holding the tiny models, built once for the whole session."""
    from vldd.models.tiny import build_tiny_models

    cache = tmp_path_factory.mktemp("vldd-cache")
    build_tiny_models(cache)
    return cache


from helpers.hub_fixtures import hub_server  # noqa: E402, F401  (the local Hub test server, for any test that publishes)
