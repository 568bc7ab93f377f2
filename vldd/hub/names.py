"""Naming and reaching the Hub: repository and configuration names, tokens, and retrying transient failures.

Tokens come from the explicit argument, else `huggingface_hub.get_token()` (`HF_TOKEN`, then `hf auth login`). They
are only ever handed to the clients: never logged, and never written to the run directory, manifest, card or repo;
error messages pass through `scrub`.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import Any, TypeVar

from .. import __version__

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_ENDPOINT = "https://huggingface.co"
RETRY_BASE_SECONDS = 2.0  # first wait after a transient failure; doubles each attempt
TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
TOKEN_HELP = ("Log in with `hf auth login`, set the HF_TOKEN environment variable, or pass a token explicitly; "
              "create a token with write access at https://huggingface.co/settings/tokens.")


class HubError(RuntimeError):
    """A push or load that could not be completed; the message says what to do."""


class HubAuthError(HubError):
    """No token, an invalid token, or a token without write access to the target namespace."""


def source_short_name(dataset: str) -> str:
    """The last part of a dataset id or path, made safe for a repository name ("frgfm/imagenette" -> "imagenette")."""
    name = re.split(r"[/\\]", dataset.strip().rstrip("/\\"))[-1].lower()
    name = re.sub(r"[^a-z0-9._-]+", "-", name)
    name = re.sub(r"[-.]{2,}", "-", name).strip("-._")
    return name[:60] or "dataset"


def default_repo_id(manifest: dict[str, Any], namespace: str, kind: str = "distilled") -> str:
    """`{namespace}/{source short name}-vldd-ipc{N}`, or `...-vldd-captions` for `kind="captions"`."""
    short = source_short_name(source_dataset(manifest))
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


def source_dataset(manifest: dict[str, Any]) -> str:
    """The dataset a run was distilled from, as its manifest names it."""
    return (manifest.get("source") or {}).get("dataset") or manifest["config"]["data"]["dataset"]


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


def scrub(text: str, token: str | None) -> str:
    """`text` with the token replaced by "<token>" (every message that may quote a client error goes through it)."""
    return text.replace(token, "<token>") if token else text


def http_status(err: BaseException) -> int | None:
    """The HTTP status of a client error's response, None when it has none."""
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
        if http_status(cause) in TRANSIENT_STATUS:
            return True
    return False


def _auth_status(err: BaseException) -> int | None:
    for cause in _causes(err):
        if http_status(cause) in (401, 403):
            return http_status(cause)
    return None


def call(what: str, fn: Callable[[], T], *, token: str, retries: int, repo_id: str | None = None) -> T:
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
                detail = scrub(str(err), token).strip().splitlines()[0][:200]
                raise HubAuthError(
                    f"The Hub refused to let this token write{where} (HTTP {status}: {detail}) while trying to "
                    f"{what}. Use a token with write access to that namespace, or push to your own namespace with "
                    f"--repo. {TOKEN_HELP}") from None
            if not _is_transient(err) or attempt == retries:
                if _is_transient(err):
                    raise HubError(f"Could not {what} after {retries + 1} attempts: {scrub(str(err), token)}. The "
                                   "local run is untouched; run the same push again to complete it.") from err
                raise
            wait = RETRY_BASE_SECONDS * 2 ** attempt
            logger.warning("could not %s (%s: %s); retrying in %.1fs (%d/%d)", what, type(err).__name__,
                           scrub(str(err), token)[:200], wait, attempt + 1, retries)
            time.sleep(wait)
    raise AssertionError("unreachable")


def authenticate(token: str | None, retries: int) -> tuple[Any, str, str]:
    """Returns (HfApi bound to the token, token, namespace of the token's user)."""
    from huggingface_hub import HfApi, is_offline_mode

    if is_offline_mode():
        raise HubError("huggingface_hub is in offline mode (HF_HUB_OFFLINE is set), and publishing needs the "
                       "network: unset HF_HUB_OFFLINE to push.")
    token = resolve_token(token)
    api = HfApi(token=token, library_name="vldd", library_version=__version__)
    try:
        who = call("check the token (whoami)", lambda: api.whoami(token=token), token=token, retries=retries)
    except HubAuthError:
        raise HubAuthError(f"The Hugging Face token was rejected as invalid or expired. {TOKEN_HELP}") from None
    role = ((who.get("auth") or {}).get("accessToken") or {}).get("role")
    if role == "read":
        raise HubAuthError(f"The Hugging Face token of {who.get('name')!r} is read-only, and publishing needs write "
                           f"access. {TOKEN_HELP}")
    return api, token, who["name"]


def full_repo_id(repo_id: str, namespace: str) -> str:
    """"namespace/name" from "name" (in `namespace`) or "namespace/name", checked against the Hub's rules."""
    repo_id = repo_id if "/" in repo_id else f"{namespace}/{repo_id}"
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]{0,95}", repo_id) or "--" in repo_id or ".." in repo_id:
        raise ValueError(f"repository id must look like 'namespace/name' (letters, digits, '-', '_', '.'), "
                         f"got {repo_id!r}")
    return repo_id

