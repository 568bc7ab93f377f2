"""Pytest fixtures pointing the real `huggingface_hub` and `datasets` clients at the local test Hub.

conftest.py sets HF_HUB_OFFLINE=1 before anything is imported, and both libraries capture the endpoint, offline mode,
Xet switch and cache paths in module-level constants at import time, so setting `HF_ENDPOINT` alone is not enough:
the fixture patches every captured value it relies on (read from huggingface_hub 2.4 / datasets 5.2 sources).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from .hub_server import HubServer


@dataclass
class Hub:
    server: HubServer
    url: str
    user: str  # the account `token` belongs to
    token: str  # write token of `user`
    read_token: str  # read-only token of `user`


def point_clients_at(monkeypatch: pytest.MonkeyPatch, url: str, home) -> None:
    """Points huggingface_hub and datasets at `url`, online, without Xet, with caches and token files under `home`."""
    import datasets
    import huggingface_hub
    from huggingface_hub import constants

    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_UPDATE_DOWNLOAD_COUNTS", "0")

    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(huggingface_hub.hf_api.api, "endpoint", url)  # module-level HfApi() behind upload_file etc.

    config = datasets.config
    monkeypatch.setattr(config, "HF_ENDPOINT", url)
    monkeypatch.setattr(config, "HUB_DATASETS_URL", url + "/datasets/{repo_id}/resolve/{revision}/{path}")
    monkeypatch.setattr(config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(config, "HF_DATASETS_OFFLINE", False)
    monkeypatch.setattr(config, "USE_PARQUET_EXPORT", False)  # else a lookup of datasets-server.<host>
    monkeypatch.setattr(config, "HF_UPDATE_DOWNLOAD_COUNTS", False)
    monkeypatch.setattr(config, "HF_DATASETS_CACHE", home / "datasets")
    monkeypatch.setattr(config, "HF_MODULES_CACHE", home / "modules")
    monkeypatch.setattr(config, "DOWNLOADED_DATASETS_PATH", home / "datasets" / "downloads")
    monkeypatch.setattr(config, "EXTRACTED_DATASETS_PATH", home / "datasets" / "downloads" / "extracted")
    # HfFileSystem instances (and their directory listings) are cached per endpoint and token
    huggingface_hub.HfFileSystem.clear_instance_cache()


@pytest.fixture
def hub_server(monkeypatch, tmp_path_factory):
    """A fresh test Hub with one user; the clients in this process talk to it until the test ends."""
    import huggingface_hub

    home = tmp_path_factory.mktemp("hf-home")
    with HubServer() as server:
        token = server.add_user("tester")
        read_token = server.add_user("tester", role="read")
        point_clients_at(monkeypatch, server.url, home)
        yield Hub(server, server.url, "tester", token, read_token)
        assert not server.state.errors, f"test Hub server errors: {server.state.errors}"
    huggingface_hub.HfFileSystem.clear_instance_cache()
