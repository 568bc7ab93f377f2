"""Publishing to the Hugging Face Hub: a run's distilled set, its captions, and a fine-tuned model.

Example:
    >>> result = push_distilled("runs/imagenette-ipc10")  # -> <you>/imagenette-vldd-ipc10, configuration ipc10-seed0
    >>> datasets.load_dataset(result.repo_id, split="train")

A push runs as idempotent steps: create the repository, upload the data with `Dataset.push_to_hub` (parquet shards;
it also merges `configs`/`dataset_info` into README.md), then load that card, render the new one around the same
metadata and commit it with the run's manifest and preview under `parent_commit`, so nothing that `push_to_hub` or a
concurrent push wrote is lost (docs/method.md, "Publishing"). Transient network errors are retried with backoff; the run directory is
only read, so a failed push leaves it untouched and running the same push again completes it.

Names, tokens and retries are in `vldd.hub.names`, card rendering in `vldd.hub.cards`, the captions reader in
`vldd.hub.captions`.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..core.provenance import is_local_path, public_name
from ..core.runs import read_manifest
from .captions import validate_captions
from .cards import PublishedRun, render_captions_card, render_dataset_card, render_model_card
from .names import HubError, authenticate, call, default_config_name, default_repo_id, full_repo_id, http_status

logger = logging.getLogger(__name__)


@dataclass
class PushResult:
    """Where a push landed."""

    repo_id: str
    config_name: str  # the dataset configuration (subset) that holds the run
    url: str  # the repository's page
    commit: str  # the commit holding the card
    num_rows: int


_PATH_FIELDS = ("config.output", "config.data.dataset", "config.caption.model", "config.caption.from_hub",
                "config.generation.model", "config.generation.lora", "config.finetune.base_model", "source.dataset", "models.captioner.id",
                "models.diffusion.id", "models.lora.id")


def public_manifest(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest as published: local paths (run directory, local dataset or model folders) cut to their last part."""
    out = copy.deepcopy(manifest)
    for dotted in _PATH_FIELDS:
        *parents, leaf = dotted.split(".")
        node = out
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(leaf), str):
            node[leaf] = public_name(node[leaf])
    for entry in out.get("evaluation") or []:
        for key, value in entry.items():
            if isinstance(value, str) and is_local_path(value):
                entry[key] = public_name(value)
    return out


@contextmanager
def _progress_bars(enabled: bool):
    import datasets
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    if enabled:
        yield
        return
    hub_was_on, datasets_was_on = not are_progress_bars_disabled(), datasets.is_progress_bar_enabled()
    disable_progress_bars()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if hub_was_on:
            enable_progress_bars()
        if datasets_was_on:
            datasets.enable_progress_bars()


# --- the run directory (read only) -----------------------------------------------------------------------------------

def _load_saved(path: Path, what: str, command: str):
    import datasets

    if not path.is_dir():
        raise FileNotFoundError(f"{str(path)!r} does not exist: the run has no {what} yet; run `{command}` first")
    loaded = datasets.load_from_disk(str(path))
    return loaded["train"] if isinstance(loaded, datasets.DatasetDict) else loaded


def _read_distilled(run_dir: Path):
    import datasets

    manifest = read_manifest(run_dir)
    dataset = _load_saved(run_dir / "dataset", "distilled dataset", "vldd distill")
    for column, kind in (("image", datasets.Image), ("label", datasets.ClassLabel)):
        if not isinstance(dataset.features.get(column), kind):
            raise ValueError(f"{str(run_dir / 'dataset')!r} must have a {kind.__name__} column {column!r}; it has "
                             f"{list(dataset.features)}")
    preview = run_dir / "preview.png"
    return manifest, dataset, preview if preview.is_file() else None


# --- pushing ---------------------------------------------------------------------------------------------------------

def push_distilled(run_dir: str | Path, repo_id: str | None = None, *, config_name: str | None = None,
                   default: bool = False, private: bool = False, token: str | None = None,
                   max_shard_size: int | str | None = None, retries: int = 3,
                   progress: bool = False) -> PushResult:
    """Publishes a run's distilled set as one configuration of a Hub dataset repository, with its card.

    Args:
        run_dir: a vldd run directory holding `manifest.json` and `dataset/`.
        repo_id: "namespace/name" or "name"; default `{your namespace}/{source}-vldd-ipc{N}`.
        config_name: the dataset configuration to publish as; default `ipc{N}-seed{S}`. Pushing an existing
            configuration again replaces its shards.
        default: make this configuration the one `load_dataset(repo_id)` loads (the first one pushed always is).
        private: create the repository private (an existing repository keeps its visibility).
        token: a Hugging Face token with write access; default `HF_TOKEN`, then the `hf auth login` token.
        max_shard_size: largest parquet shard, e.g. "500MB" (`datasets`' default).
        retries: attempts after the first for each step that fails with a transient network error.
        progress: show upload progress bars.
    """
    run_dir = Path(run_dir)
    # 1. Read the run (only read: a failed push leaves it untouched).
    manifest, dataset, preview = _read_distilled(run_dir)
    config_name = config_name or default_config_name(manifest)
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*", config_name) or config_name in ("data", "default", "vldd"):
        raise ValueError(f"`config_name` must be letters, digits, '-', '_' or '.', and not 'data', 'default' or "
                         f"'vldd'; got {config_name!r}")
    # 2. Authenticate and name the repository.
    api, token, namespace = authenticate(token, retries)
    repo_id = full_repo_id(repo_id or default_repo_id(manifest, namespace), namespace)
    with _progress_bars(progress):
        # 3. Create the repository (a no-op when it exists).
        _ensure_repo(api, repo_id, private, token, retries)
        # 4. Data first: parquet shards under `{config_name}/`; replaces the configuration's old shards.
        current_default = call("read the dataset card", lambda: _default_config(api, repo_id), token=token,
                                retries=retries, repo_id=repo_id)
        make_default = default or current_default is None or current_default == config_name
        call(f"upload the {config_name!r} shards", lambda: dataset.push_to_hub(
            repo_id, config_name=config_name, set_default=make_default and current_default != config_name,
            split="train", token=token, max_shard_size=max_shard_size,
            commit_message=f"Upload {config_name} (vldd {__version__})"), token=token, retries=retries,
            repo_id=repo_id)
        # 5. Then the card: load what push_to_hub wrote, render around it, commit with manifest and preview.
        default_name = config_name if make_default else current_default
        published = public_manifest(manifest)
        extra = {f"vldd/{config_name}/manifest.json": (json.dumps(published, indent=2, default=str) + "\n").encode()}
        if preview is not None:
            extra[f"vldd/{config_name}/preview.png"] = preview.read_bytes()
        this = (config_name, published, preview is not None)
        commit = call("update the dataset card", lambda: _commit_card(
            api, repo_id, token, default_name, extra, _distilled_card, this), token=token, retries=retries,
            repo_id=repo_id)
    url = f"{api.endpoint}/datasets/{repo_id}"
    logger.info("published %d images as configuration %r of %s", dataset.num_rows, config_name, url)
    return PushResult(repo_id, config_name, url, commit, dataset.num_rows)


def push_captions(run_dir: str | Path, repo_id: str | None = None, *, private: bool = False,
                  token: str | None = None, max_shard_size: int | str | None = None, retries: int = 3,
                  progress: bool = False) -> PushResult:
    """Publishes a run's captions (`RUN_DIR/captions/`) as their own Hub dataset, with a card.

    They can then seed another run's caption stage (`caption.from_hub`, see `load_published_captions`) instead of
    captioning again. Pushing again replaces the captions.

    Args:
        run_dir: a vldd run directory holding `manifest.json` and `captions/`.
        repo_id: "namespace/name" or "name"; default `{your namespace}/{source}-vldd-captions`.
        private, token, max_shard_size, retries, progress: as in `push_distilled`.
    """
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    captions = validate_captions(_load_saved(run_dir / "captions", "captions", "vldd caption"))
    api, token, namespace = authenticate(token, retries)
    repo_id = full_repo_id(repo_id or default_repo_id(manifest, namespace, kind="captions"), namespace)
    with _progress_bars(progress):
        _ensure_repo(api, repo_id, private, token, retries)
        call("upload the captions", lambda: captions.push_to_hub(
            repo_id, split="train", token=token, max_shard_size=max_shard_size,
            commit_message=f"Upload captions (vldd {__version__})"), token=token, retries=retries, repo_id=repo_id)
        published = public_manifest(manifest)
        extra = {"vldd/captions/manifest.json": (json.dumps(published, indent=2, default=str) + "\n").encode()}
        commit = call("update the dataset card", lambda: _commit_card(
            api, repo_id, token, None, extra, _captions_card, ("default", published, False)), token=token,
            retries=retries, repo_id=repo_id)
    url = f"{api.endpoint}/datasets/{repo_id}"
    logger.info("published %d captions to %s", captions.num_rows, url)
    return PushResult(repo_id, "default", url, commit, captions.num_rows)


def push_model(output: str | Path, repo_id: str, *, private: bool = False, token: str | None = None,
               retries: int = 3) -> str:
    """Uploads a fine-tuned model directory (without its checkpoints) to a Hub model repository, card included.

    The same path as the dataset pushes: offline check, token check (invalid, read-only), retries with backoff on
    transient errors, and no token in any message.

    Args:
        output: a directory `vldd.jobs.finetune.finetune` wrote.
        repo_id: "namespace/name", or "name" in the token owner's namespace.
        private: create the repository private.
        token: a write token; default `huggingface_hub`'s (HF_TOKEN, then `hf auth login`).
        retries: attempts after a transient failure.

    Returns:
        The repository id ("namespace/name").
    """
    from ..core.runs import read_json, write_text
    from .cards import MODEL_SUMMARY

    output = Path(output)
    summary = read_json(output / MODEL_SUMMARY)
    if summary is None:
        raise FileNotFoundError(f"{str(output)!r} holds no finished fine-tuning ({MODEL_SUMMARY} is missing)")
    api, token, namespace = authenticate(token, retries)
    repo_id = full_repo_id(repo_id, namespace)
    _ensure_repo(api, repo_id, private, token, retries, repo_type="model")
    write_text(output / "README.md", render_model_card(summary, repo_id=repo_id))
    call("upload the model", lambda: api.upload_folder(
        folder_path=str(output), repo_id=repo_id, repo_type="model",
        ignore_patterns=["checkpoints/**", ".*", "finetune_config.json"],
        commit_message=f"Upload fine-tuned model (vldd {__version__})"), token=token, retries=retries, repo_id=repo_id)
    logger.info("published %s to %s/%s", output, api.endpoint, repo_id)
    return repo_id


def _ensure_repo(api, repo_id: str, private: bool, token: str, retries: int, repo_type: str = "dataset") -> None:
    call(f"create the repository {repo_id!r}", lambda: api.create_repo(
        repo_id, repo_type=repo_type, private=private, exist_ok=True), token=token, retries=retries, repo_id=repo_id)
    if private:
        info = call("read the repository", lambda: api.repo_info(repo_id, repo_type=repo_type), token=token,
                     retries=retries, repo_id=repo_id)
        if not info.private:
            logger.warning("%s already exists and is public: --private applies only to new repositories", repo_id)


def _download(api, repo_id: str, path: str, revision: str, cache_dir: str) -> Path | None:
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return Path(api.hf_hub_download(repo_id, path, repo_type="dataset", revision=revision, cache_dir=cache_dir))
    except EntryNotFoundError:
        return None


def _load_card(api, repo_id: str, revision: str, cache_dir: str):
    from huggingface_hub import DatasetCard

    path = _download(api, repo_id, "README.md", revision, cache_dir)
    return DatasetCard.load(path) if path is not None else DatasetCard("---\n{}\n---\n")


def _configs(card) -> Any:
    from datasets.utils.metadata import MetadataConfigs

    return MetadataConfigs.from_dataset_card_data(card.data)


def _default_config(api, repo_id: str) -> str | None:
    sha = api.repo_info(repo_id, repo_type="dataset").sha
    with tempfile.TemporaryDirectory(prefix="vldd-hub-") as cache:
        return _configs(_load_card(api, repo_id, sha, cache)).get_default_config_name()


def _commit_card(api, repo_id: str, token: str, default_name: str | None, extra: dict[str, bytes], render,
                 this: tuple[str, dict, bool]) -> str:
    """Loads the card at the head commit, renders the new one around its metadata, commits it with `extra` files.

    `parent_commit` makes the Hub refuse the commit when anything was pushed in between; that is retried from a
    fresh load, so nothing `push_to_hub` (or another push) wrote to the card is lost.
    """
    from huggingface_hub import CommitOperationAdd
    from huggingface_hub.errors import HfHubHTTPError

    for attempt in range(5):
        sha = api.repo_info(repo_id, repo_type="dataset").sha
        with tempfile.TemporaryDirectory(prefix="vldd-hub-") as cache:
            card = _load_card(api, repo_id, sha, cache)
            metadata = _hub_metadata(card, default_name)
            text = render(api, repo_id, sha, cache, card, metadata, this)
        files = {"README.md": text.encode(), **extra}
        leaked = [path for path, data in files.items() if path.endswith((".md", ".json")) and token.encode() in data]
        if leaked:  # defence in depth: nothing vldd writes should ever hold the token
            raise HubError(f"refusing to publish {leaked}: they contain the Hugging Face token")
        operations = [CommitOperationAdd(path_in_repo=path, path_or_fileobj=data) for path, data in files.items()]
        try:
            info = api.create_commit(repo_id, operations, repo_type="dataset", parent_commit=sha,
                                     commit_message=f"Update dataset card ({this[0]}, vldd {__version__})")
            return info.oid
        except HfHubHTTPError as err:
            if http_status(err) not in (409, 412) or attempt == 4:
                raise
            logger.info("the repository changed while the card was being written; reloading it")
    raise AssertionError("unreachable")


def _hub_metadata(card, default_name: str | None) -> dict[str, Any]:
    """The card's `configs` and `dataset_info` as `push_to_hub` left them, with exactly one default configuration.

    `push_to_hub` drops the `default` flag when it re-pushes the default configuration, so it is set again here.
    """
    metadata = {key: copy.deepcopy(card.data.get(key)) for key in ("configs", "dataset_info")
                if card.data.get(key) is not None}
    configs = metadata.get("configs") or []
    names = [config.get("config_name") for config in configs]
    if default_name in names and len(configs) > 1:
        for config in configs:
            config.pop("default", None)
            if config.get("config_name") == default_name:
                config["default"] = True
    return metadata


def _num_rows(card, config_name: str) -> int | None:
    from datasets.info import DatasetInfosDict

    info = DatasetInfosDict.from_dataset_card_data(card.data).get(config_name)
    if info is None or not info.splits:
        return None
    return sum(split.num_examples or 0 for split in info.splits.values())


def _distilled_card(api, repo_id, sha, cache, card, metadata, this) -> str:
    """Gathers every configuration's published manifest from the repository and renders the card."""
    this_name, this_manifest, this_has_preview = this
    names = [c["config_name"] for c in metadata.get("configs", [])]
    default_name = next((c["config_name"] for c in metadata.get("configs", []) if c.get("default")),
                        names[0] if names else this_name)
    files = set(api.list_repo_files(repo_id, repo_type="dataset", revision=sha))
    runs = []
    for name in names:
        if name == this_name:
            manifest = this_manifest
        elif f"vldd/{name}/manifest.json" in files:
            manifest = json.loads(_download(api, repo_id, f"vldd/{name}/manifest.json", sha, cache).read_text())
        else:  # a configuration vldd did not push: its YAML stays, the body does not describe it
            continue
        preview = f"vldd/{name}/preview.png"
        has_preview = preview in files or (name == this_name and this_has_preview)
        url = f"{api.endpoint}/datasets/{repo_id}/resolve/main/{preview}" if has_preview else None
        runs.append(PublishedRun(name, manifest, _num_rows(card, name) or 0, url))
    return render_dataset_card(runs, repo_id, default_config=default_name, metadata=metadata)


def _captions_card(api, repo_id, sha, cache, card, metadata, this) -> str:
    rows = _num_rows(card, "default") or 0
    return render_captions_card(this[1], repo_id, rows, metadata=metadata)
