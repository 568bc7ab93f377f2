"""Publishing to the Hugging Face Hub: distilled sets, captions, and their dataset cards.

Example:
    >>> result = push_distilled("runs/imagenette-ipc10")  # -> <you>/imagenette-vldd-ipc10, configuration ipc10-seed0
    >>> datasets.load_dataset(result.repo_id, split="train")
    >>> captions = load_published_captions("<you>/imagenette-vldd-captions", class_names=names)

A push runs as idempotent steps: create the repository, upload the data with `Dataset.push_to_hub` (parquet shards;
it also merges `configs`/`dataset_info` into README.md), then load that card, render the new one around the same
metadata and commit it with the run's manifest and preview under `parent_commit`, so nothing that `push_to_hub` or a
concurrent push wrote is lost (docs/method.md, "Publishing"). Transient network errors are retried with backoff; the run directory is
only read, so a failed push leaves it untouched and running the same push again completes it.

Tokens come from the explicit argument, else `huggingface_hub.get_token()` (`HF_TOKEN`, then `hf auth login`). They
are only ever handed to the clients: never logged, and never written to the run directory, manifest, card or repo.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from .. import __version__
from ..core.provenance import is_local_path, public_name
from ..core.runs import read_manifest
from .cards import PAPER_BIBTEX, flatten, md_cell, render_model_card, robust_text, template

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_ENDPOINT = "https://huggingface.co"
RETRY_BASE_SECONDS = 2.0  # first wait after a transient failure; doubles each attempt
TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
TOKEN_HELP = ("Log in with `hf auth login`, set the HF_TOKEN environment variable, or pass a token explicitly; "
              "create a token with write access at https://huggingface.co/settings/tokens.")
DISTILLED_COLUMNS = {  # column -> meaning, for the card (columns a run lacks are left out)
    "image": "the synthetic image",
    "label": "class id; `ClassLabel` with every class name of the source dataset, so ids match the source",
    "class_name": "the class name (the source's label name)",
    "prompt_class_name": "the class name the captioning prompt and the text-prototype filter used (for ImageNet "
                         "sources the full ImageNet name, e.g. `tench, Tinca tinca`)",
    "prompt": "the text prototype the image was generated from",
    "cluster": "index of the image prototype (k-means cluster) within its class",
    "cluster_size": "number of source images in that cluster (after outlier removal)",
    "seed": "the run's seed",
    "source_dataset": "the source dataset",
    "source_row": "source row whose caption became the prompt (-1 when a fallback prompt was used)",
    "text_fallback": "which fallback made the prompt when no description scored (empty when none was needed)",
}
CAPTION_COLUMNS = {"source_index": "int", "label": "class", "caption": "string", "captioner": "string",
                   "prompt": "string"}
REQUIRED_CAPTION_COLUMNS = ("source_index", "label", "caption")
SIZE_CATEGORIES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                   (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")]


class HubError(RuntimeError):
    """A push or load that could not be completed; the message says what to do."""


class HubAuthError(HubError):
    """No token, an invalid token, or a token without write access to the target namespace."""


@dataclass
class PushResult:
    """Where a push landed."""

    repo_id: str
    config_name: str  # the dataset configuration (subset) that holds the run
    url: str  # the repository's page
    commit: str  # the commit holding the card
    num_rows: int


@dataclass
class PublishedRun:
    """One configuration of a distilled-set repository, as the card describes it."""

    config_name: str
    manifest: dict[str, Any]  # the run's manifest, as published
    num_rows: int
    preview_url: str | None = None  # where the preview grid can be fetched, None when not uploaded


# --- names -----------------------------------------------------------------------------------------------------------

def source_short_name(dataset: str) -> str:
    """The last part of a dataset id or path, made safe for a repository name ("frgfm/imagenette" -> "imagenette")."""
    name = re.split(r"[/\\]", dataset.strip().rstrip("/\\"))[-1].lower()
    name = re.sub(r"[^a-z0-9._-]+", "-", name)
    name = re.sub(r"[-.]{2,}", "-", name).strip("-._")
    return name[:60] or "dataset"


def default_repo_id(manifest: dict[str, Any], namespace: str, kind: str = "distilled") -> str:
    """`{namespace}/{source short name}-vldd-ipc{N}`, or `...-vldd-captions` for `kind="captions"`."""
    short = source_short_name(_source_id(manifest))
    if kind == "captions":
        return f"{namespace}/{short}-vldd-captions"
    if kind != "distilled":
        raise ValueError(f"`kind` must be 'distilled' or 'captions', got {kind!r}")
    return f"{namespace}/{short}-vldd-ipc{manifest['config']['ipc']}"


def default_config_name(manifest: dict[str, Any]) -> str:
    """`ipc{N}-seed{S}`: the dataset configuration a run is published as; a variant of an ablation (`vldd ablate`)
    adds its name (`ipc10-seed0-no-lof`)."""
    ablation = manifest.get("ablation")
    if isinstance(ablation, dict) and ablation.get("config_name"):
        return ablation["config_name"]
    return f"ipc{manifest['config']['ipc']}-seed{manifest['config']['seed']}"


def size_category(num_rows: int) -> str:
    """The Hub's `size_categories` value for a row count."""
    for bound, name in SIZE_CATEGORIES:
        if num_rows < bound:
            return name
    return "n>1B" if num_rows < 10_000_000_000 else "n>1T"


def _source_id(manifest: dict[str, Any]) -> str:
    return (manifest.get("source") or {}).get("dataset") or manifest["config"]["data"]["dataset"]


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


# --- tokens ----------------------------------------------------------------------------------------------------------

def resolve_token(token: str | None = None) -> str:
    """The explicit token, else the one `huggingface_hub` finds (`HF_TOKEN`, then the `hf auth login` token file).

    Raises:
        HubAuthError: when there is none.
    """
    if token:
        return token
    from huggingface_hub import get_token

    found = get_token()
    if not found:
        raise HubAuthError(f"No Hugging Face token found, and publishing needs one. {TOKEN_HELP}")
    return found


def _scrub(text: str, token: str | None) -> str:
    return text.replace(token, "<token>") if token else text


def _status(err: BaseException) -> int | None:
    response = getattr(err, "response", None)
    return getattr(response, "status_code", None)


def _causes(err: BaseException):
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def _is_transient(err: BaseException) -> bool:
    for cause in _causes(err):
        if type(cause).__name__ == "OfflineModeIsEnabled":
            return False
        if isinstance(cause, (ConnectionError, TimeoutError)):
            return True
        names = {cls.__name__ for cls in type(cause).__mro__ if cls.__module__.split(".")[0].startswith("httpx")}
        if names & {"TransportError", "NetworkError", "TimeoutException", "RemoteProtocolError"}:
            return True
        if _status(cause) in TRANSIENT_STATUS:
            return True
    return False


def _auth_status(err: BaseException) -> int | None:
    for cause in _causes(err):
        if _status(cause) in (401, 403):
            return _status(cause)
    return None


def _call(what: str, fn: Callable[[], T], *, token: str, retries: int, repo_id: str | None = None) -> T:
    """Runs one idempotent push step, retrying transient failures with exponential backoff."""
    for attempt in range(retries + 1):
        try:
            return fn()
        except HubError:
            raise
        except Exception as err:
            status = _auth_status(err)
            if status is not None:
                where = f" to {repo_id!r}" if repo_id else ""
                detail = _scrub(str(err), token).strip().splitlines()[0][:200]
                raise HubAuthError(
                    f"The Hub refused to let this token write{where} (HTTP {status}: {detail}) while trying to "
                    f"{what}. Use a token with write access to that namespace, or push to your own namespace with "
                    f"--repo. {TOKEN_HELP}") from None
            if not _is_transient(err) or attempt == retries:
                if _is_transient(err):
                    raise HubError(f"Could not {what} after {retries + 1} attempts: {_scrub(str(err), token)}. The "
                                   "local run is untouched; run the same push again to complete it.") from err
                raise
            wait = RETRY_BASE_SECONDS * 2 ** attempt
            logger.warning("could not %s (%s: %s); retrying in %.1fs (%d/%d)", what, type(err).__name__,
                           _scrub(str(err), token)[:200], wait, attempt + 1, retries)
            time.sleep(wait)
    raise AssertionError("unreachable")


def _authenticate(token: str | None, retries: int) -> tuple[Any, str, str]:
    """Returns (HfApi bound to the token, token, namespace of the token's user)."""
    from huggingface_hub import HfApi, is_offline_mode

    if is_offline_mode():
        raise HubError("huggingface_hub is in offline mode (HF_HUB_OFFLINE is set), and publishing needs the "
                       "network: unset HF_HUB_OFFLINE to push.")
    token = resolve_token(token)
    api = HfApi(token=token, library_name="vldd", library_version=__version__)
    try:
        who = _call("check the token (whoami)", lambda: api.whoami(token=token), token=token, retries=retries)
    except HubAuthError:
        raise HubAuthError(f"The Hugging Face token was rejected as invalid or expired. {TOKEN_HELP}") from None
    role = ((who.get("auth") or {}).get("accessToken") or {}).get("role")
    if role == "read":
        raise HubAuthError(f"The Hugging Face token of {who.get('name')!r} is read-only, and publishing needs write "
                           f"access. {TOKEN_HELP}")
    return api, token, who["name"]


def _full_repo_id(repo_id: str, namespace: str) -> str:
    repo_id = repo_id if "/" in repo_id else f"{namespace}/{repo_id}"
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]{0,95}", repo_id) or "--" in repo_id or ".." in repo_id:
        raise ValueError(f"repository id must look like 'namespace/name' (letters, digits, '-', '_', '.'), "
                         f"got {repo_id!r}")
    return repo_id


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
    api, token, namespace = _authenticate(token, retries)
    repo_id = _full_repo_id(repo_id or default_repo_id(manifest, namespace), namespace)
    with _progress_bars(progress):
        # 3. Create the repository (a no-op when it exists).
        _ensure_repo(api, repo_id, private, token, retries)
        # 4. Data first: parquet shards under `{config_name}/`; replaces the configuration's old shards.
        current_default = _call("read the dataset card", lambda: _default_config(api, repo_id), token=token,
                                retries=retries, repo_id=repo_id)
        make_default = default or current_default is None or current_default == config_name
        _call(f"upload the {config_name!r} shards", lambda: dataset.push_to_hub(
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
        commit = _call("update the dataset card", lambda: _commit_card(
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
    api, token, namespace = _authenticate(token, retries)
    repo_id = _full_repo_id(repo_id or default_repo_id(manifest, namespace, kind="captions"), namespace)
    with _progress_bars(progress):
        _ensure_repo(api, repo_id, private, token, retries)
        _call("upload the captions", lambda: captions.push_to_hub(
            repo_id, split="train", token=token, max_shard_size=max_shard_size,
            commit_message=f"Upload captions (vldd {__version__})"), token=token, retries=retries, repo_id=repo_id)
        published = public_manifest(manifest)
        extra = {"vldd/captions/manifest.json": (json.dumps(published, indent=2, default=str) + "\n").encode()}
        commit = _call("update the dataset card", lambda: _commit_card(
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
    api, token, namespace = _authenticate(token, retries)
    repo_id = _full_repo_id(repo_id, namespace)
    _ensure_repo(api, repo_id, private, token, retries, repo_type="model")
    write_text(output / "README.md", render_model_card(summary, repo_id=repo_id))
    _call("upload the model", lambda: api.upload_folder(
        folder_path=str(output), repo_id=repo_id, repo_type="model",
        ignore_patterns=["checkpoints/**", ".*", "finetune_config.json"],
        commit_message=f"Upload fine-tuned model (vldd {__version__})"), token=token, retries=retries, repo_id=repo_id)
    logger.info("published %s to %s/%s", output, api.endpoint, repo_id)
    return repo_id


def _ensure_repo(api, repo_id: str, private: bool, token: str, retries: int, repo_type: str = "dataset") -> None:
    _call(f"create the repository {repo_id!r}", lambda: api.create_repo(
        repo_id, repo_type=repo_type, private=private, exist_ok=True), token=token, retries=retries, repo_id=repo_id)
    if private:
        info = _call("read the repository", lambda: api.repo_info(repo_id, repo_type=repo_type), token=token,
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
            if _status(err) not in (409, 412) or attempt == 4:
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


# --- cards (pure) ----------------------------------------------------------------------------------------------------




def _hub_link(dataset: str) -> str:
    if "/" in dataset and not is_local_path(dataset):
        return f"[`{dataset}`]({DEFAULT_ENDPOINT}/datasets/{dataset})"
    return f"`{dataset}`"


def _mean_std(result: dict, key: str) -> str:
    value = result.get(key)
    if isinstance(value, dict):
        mean, std = value.get("mean"), value.get("std")
    else:
        mean, std = result.get(f"{key}_mean", value), result.get(f"{key}_std")
    if not isinstance(mean, (int, float)):
        return "—"
    return f"{mean:.2f} ± {std:.2f}" if isinstance(std, (int, float)) else f"{mean:.2f}"


def _evaluation_rows(results: list[dict]) -> list[dict]:
    """One row per result, then one per baseline trained under the same recipe (e.g. a random real subset)."""
    shown = {"protocol", "student", "best", "best_mean", "best_std", "final", "final_mean", "final_std",
             "results_file", "robust"}
    rows = []
    for result in results:
        details = "; ".join(f"{k}: {md_cell(v)}" for k, v in result.items()
                            if k not in shown and not isinstance(v, (dict, list)))
        common = {"protocol": md_cell(result.get("protocol")), "student": md_cell(result.get("student"))}
        robust = result.get("robust") if isinstance(result.get("robust"), dict) else None
        rows.append({**common, "data": "this dataset", "best": _mean_std(result, "best"),
                     "final": _mean_std(result, "final"), "robust": robust_text(robust) or "—", "details": details})
        for name, baseline in (result.get("baselines") or {}).items():
            if isinstance(baseline, dict):
                rows.append({**common, "data": f"baseline: {md_cell(name)}", "best": _mean_std(baseline, "best"),
                             "final": _mean_std(baseline, "final"), "robust": "—", "details": "same recipe"})
    return rows


def _license(manifests: Sequence[dict]) -> tuple[str | list[str], bool]:
    """The card's licence (the sources'), and whether it is unknown."""
    found = {(m.get("source") or {}).get("license") for m in manifests}
    if None in found or not found:
        return "unknown", True
    return (found.pop(), False) if len(found) == 1 else (sorted(found), False)


def _class_list(names: list[str], prompt_names: list[str], classes: list[int]) -> str:
    """"name (id)" per class; where the prompts named a class otherwise, "name (id): prompt name" joined by "; "."""
    renamed = any(prompt_names[c] != names[c] for c in classes if c < min(len(names), len(prompt_names)))
    if not renamed:
        return ", ".join(f"{names[c]} ({c})" if c < len(names) else str(c) for c in classes)
    return "; ".join(f"{names[c]} ({c}): {prompt_names[c]}" if c < len(names) else str(c) for c in classes)


def _run_context(run: PublishedRun, default_config: str) -> dict[str, Any]:
    m = run.manifest
    source, config = m.get("source") or {}, m.get("config") or {}
    names = source.get("class_names") or []
    prompt_names = source.get("prompt_class_names") or names
    classes = source.get("classes") or []
    models = [(role, info.get("id"), info.get("revision")) for role, info in (m.get("models") or {}).items()
              if isinstance(info, dict)]
    hyper = [(k, md_cell(v)) for k, v in flatten(config) if k != "output"]
    results = m.get("evaluation") or []
    return {
        "name": run.config_name, "is_default": run.config_name == default_config, "rows": run.num_rows,
        "ipc": config.get("ipc"), "seed": config.get("seed"), "tiny": bool(m.get("tiny")),
        "source": _hub_link(_source_id(m)), "source_config": source.get("config_name"),
        "split": source.get("split"), "revision": source.get("revision") or source.get("fingerprint"),
        "num_classes": len(classes), "num_source_classes": len(names),
        "class_list": _class_list(names, prompt_names, classes),
        "names_from": source.get("class_names_from"),
        "models": [(role, md_cell(mid), md_cell(rev or "not recorded")) for role, mid, rev in models],
        "hyperparameters": hyper, "seeds": [(k, md_cell(v)) for k, v in (m.get("seeds") or {}).items()],
        "versions": [(k, md_cell(v)) for k, v in (m.get("versions") or {}).items()],
        "timings": [(k, md_cell(v)) for k, v in (m.get("timings") or {}).items()],
        "vldd_version": m.get("vldd_version"), "preview_url": run.preview_url,
        "evaluation": _evaluation_rows(results) if results else None,
        "ablation": ({"variant": md_cell(m["ablation"].get("variant")), "changes": md_cell(m["ablation"].get("changes"))}
                     if isinstance(m.get("ablation"), dict) else None),
    }


def _ablations(runs: Sequence[PublishedRun], repo_id: str) -> list[dict[str, Any]]:
    """The ablations (`vldd ablate`) the configurations belong to, each with every variant it evaluated: name, what
    it changes, its configurations (a link where pushed to this repository), scores; the baselines last."""
    pushed = {r.config_name for r in runs}
    found: dict[str, dict[str, Any]] = {}
    for run in runs:
        ablation = run.manifest.get("ablation")
        if not isinstance(ablation, dict) or not isinstance(ablation.get("variants"), list):
            continue
        key = json.dumps([v.get("config_names") for v in ablation["variants"]])
        entry = found.setdefault(key, {"recipe": md_cell(", ".join(
            str(x) for x in (f"{ablation.get('protocol')}-label protocol", ablation.get("student"),
                             f"{ablation.get('image_size')} px", f"{ablation.get('epochs')} epochs",
                             f"{ablation.get('repeats')} repeat(s)",
                             f"seeds {', '.join(map(str, ablation.get('seeds') or []))}"))),
            "members": [], "rows": []})
        entry["members"].append(run.config_name)
        if entry["rows"]:
            continue
        for v in ablation["variants"]:
            names = v.get("config_names") or []
            configs = ", ".join(f"[`{n}`]({DEFAULT_ENDPOINT}/datasets/{repo_id}/viewer/{n})" if n in pushed
                                else f"`{n}` (not pushed)" for n in names) or "—"
            scores = {k: v.get(k) for k in ("hlr_mean", "hlr_std", "ior_mean", "ior_std", "lrs_mean", "lrs_std")}
            robust = {k: {"mean": scores[f"{k}_mean"], "std": scores[f"{k}_std"]} for k in ("hlr", "ior", "lrs")
                      if isinstance(scores[f"{k}_mean"], (int, float))}
            entry["rows"].append({"name": md_cell(v.get("name")), "changes": md_cell(v.get("changes")),
                                  "configs": configs, "best": _mean_std(v, "best"), "final": _mean_std(v, "final"),
                                  "robust": robust_text(robust) or "—"})
    for entry in found.values():
        entry["members"] = ", ".join(f"`{name}`" for name in entry["members"])
    return list(found.values())


def render_dataset_card(runs: Sequence[PublishedRun], repo_id: str, *, default_config: str,
                        metadata: dict[str, Any] | None = None) -> str:
    """Renders the distilled-set card (YAML metadata + markdown body) from `templates/dataset_card.md`. Pure.

    Args:
        runs: the configurations of the repository, each with its published manifest.
        repo_id: the repository ("namespace/name").
        default_config: the configuration `load_dataset(repo_id)` loads.
        metadata: `configs` and `dataset_info` written by `push_to_hub`, kept verbatim in the YAML.
    """
    from huggingface_hub import DatasetCard, DatasetCardData

    if not runs:
        raise ValueError("`runs` must hold at least one configuration")
    manifests = [r.manifest for r in runs]
    license_, unknown_license = _license(manifests)
    sources = sorted({_source_id(m) for m in manifests})
    ipcs = sorted({m["config"]["ipc"] for m in manifests})
    short = ", ".join(source_short_name(s) for s in sources)
    data = DatasetCardData(
        license=license_, task_categories=["image-classification"],
        size_categories=[size_category(max(r.num_rows for r in runs))], source_datasets=sources,
        pretty_name=f"{short} distilled with VLCP (vldd)",
        tags=["dataset-distillation", "vldd", *(f"ipc-{n}" for n in ipcs), "synthetic"],
        **(metadata or {}))
    ordered = sorted(runs, key=lambda r: (r.config_name != default_config, r.config_name))
    card = DatasetCard.from_template(
        data, template_str=template("dataset_card.md"), repo_id=repo_id, title=data.pretty_name,
        sources=[_hub_link(s) for s in sources], unknown_license=unknown_license, license_name=license_,
        default_config=default_config, runs=[_run_context(r, default_config) for r in ordered],
        columns=[(c, DISTILLED_COLUMNS.get(c, "")) for c in _columns(metadata, default_config)],
        bibtex=PAPER_BIBTEX, vldd_version=__version__, any_tiny=any(m.get("tiny") for m in manifests),
        ablations=_ablations(ordered, repo_id))
    return str(card)


def _columns(metadata: dict | None, config_name: str) -> list[str]:
    """Column names of a configuration from `dataset_info`, else vldd's standard columns."""
    info = (metadata or {}).get("dataset_info")
    infos = info if isinstance(info, list) else [info] if isinstance(info, dict) else []
    for item in infos:
        if item.get("config_name", "default") == config_name and item.get("features"):
            return [f["name"] for f in item["features"] if "name" in f]
    return list(DISTILLED_COLUMNS)


def render_captions_card(manifest: dict[str, Any], repo_id: str, num_rows: int, *,
                         metadata: dict[str, Any] | None = None) -> str:
    """Renders the captions card from `templates/captions_card.md`. Pure.

    Args:
        manifest: the (published) manifest of the run the captions come from.
        repo_id: the repository ("namespace/name").
        num_rows: number of captions.
        metadata: `configs` and `dataset_info` written by `push_to_hub`, kept verbatim in the YAML.
    """
    from huggingface_hub import DatasetCard, DatasetCardData

    license_, unknown_license = _license([manifest])
    source_id = _source_id(manifest)
    source, config = manifest.get("source") or {}, manifest.get("config") or {}
    captioner = (manifest.get("models") or {}).get("captioner") or {}
    data = DatasetCardData(
        license=license_, task_categories=["image-to-text"], size_categories=[size_category(num_rows)],
        source_datasets=[source_id], pretty_name=f"{source_short_name(source_id)} captions (vldd)",
        tags=["vldd", "captions", "dataset-distillation", "synthetic"], **(metadata or {}))
    caption_settings = [(k, md_cell(v)) for k, v in flatten(config.get("caption") or {}) if k not in ("from_hub",)]
    card = DatasetCard.from_template(
        data, template_str=template("captions_card.md"), repo_id=repo_id, title=data.pretty_name,
        source=_hub_link(source_id), source_id=source_id, source_config=source.get("config_name"),
        split=source.get("split"),
        revision=source.get("revision") or source.get("fingerprint"), num_rows=num_rows,
        num_classes=len(source.get("classes") or []), captioner_id=md_cell(captioner.get("id")),
        captioner_revision=md_cell(captioner.get("revision") or "not recorded"), caption_settings=caption_settings,
        versions=[(k, md_cell(v)) for k, v in (manifest.get("versions") or {}).items()], tiny=bool(manifest.get("tiny")),
        unknown_license=unknown_license, license_name=license_, bibtex=PAPER_BIBTEX, vldd_version=__version__)
    return str(card)


# --- reusing published captions --------------------------------------------------------------------------------------

def validate_captions(dataset, class_names: Sequence[str] | None = None):
    """Checks a captions dataset's columns (and label names, when given); returns it unchanged.

    Raises:
        ValueError: naming the missing or mistyped column, or the label-name mismatch.
    """
    import datasets

    features = dataset.features
    missing = [c for c in REQUIRED_CAPTION_COLUMNS if c not in features]
    if missing:
        raise ValueError(f"captions dataset is missing columns {missing}; it must have {list(CAPTION_COLUMNS)} "
                         f"(captioner and prompt optional), it has {list(features)}")

    def is_int(feature) -> bool:
        return isinstance(feature, datasets.Value) and feature.dtype.startswith(("int", "uint"))

    def is_str(feature) -> bool:
        return isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")

    if not is_int(features["source_index"]):
        raise ValueError(f"captions column 'source_index' must be an integer, got {features['source_index']}")
    label = features["label"]
    if not (isinstance(label, datasets.ClassLabel) or is_int(label)):
        raise ValueError(f"captions column 'label' must be a ClassLabel or an integer, got {label}")
    for column in ("caption", "captioner", "prompt"):
        if column in features and not is_str(features[column]):
            raise ValueError(f"captions column {column!r} must be a string, got {features[column]}")
    if class_names is not None and isinstance(label, datasets.ClassLabel) and list(label.names) != list(class_names):
        raise ValueError(f"the captions' label names ({len(label.names)}: {label.names[:5]}...) differ from the "
                         f"source dataset's ({len(class_names)}: {list(class_names)[:5]}...); they were made from "
                         "another dataset")
    if dataset.num_rows and any(c is None for c in dataset["caption"]):
        raise ValueError("captions column 'caption' has empty (null) values")
    return dataset


def load_published_captions(repo_id_or_dir: str | Path, *, revision: str | None = None,
                            config_name: str | None = None, split: str = "train", token: str | None = None,
                            class_names: Sequence[str] | None = None):
    """Loads captions published with `push_captions` (or saved by a run) and validates their columns.

    Args:
        repo_id_or_dir: a Hub dataset id, a run directory (its `captions/` is used), a `save_to_disk` directory, or a
            local copy of a captions repository.
        revision: Hub revision (branch, tag or commit) to load.
        config_name: dataset configuration, when the repository has several.
        split: the split holding the captions.
        token: for private repositories; default the `huggingface_hub` login.
        class_names: the source dataset's label names; when given, the captions' names must match them.

    Returns:
        A `datasets.Dataset` with columns source_index, label, caption (and captioner, prompt when published).
    """
    import datasets

    path = Path(repo_id_or_dir).expanduser()
    if path.is_dir():
        if (path / "captions").is_dir() and (path / "manifest.json").is_file():
            path = path / "captions"
        if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise ValueError(f"split {split!r} not in {str(path)!r}; it has {sorted(loaded)}")
                loaded = loaded[split]
        else:
            loaded = datasets.load_dataset(str(path), name=config_name, split=split)
    else:
        try:
            loaded = datasets.load_dataset(str(repo_id_or_dir), name=config_name, split=split, revision=revision,
                                           token=token)
        except Exception as err:
            raise ValueError(f"could not load captions {str(repo_id_or_dir)!r}: it is neither a local directory nor "
                             f"a loadable Hub dataset ({type(err).__name__}: {_scrub(str(err), token)})") from err
    return validate_captions(loaded, class_names)
