"""The Publish tab: the visitor's sign-in, the repository name offered, and the push with the visitor's token."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from .controls import parse_int

logger = logging.getLogger(__name__)

GRADIO_MOCK_TOKEN = "mock-oauth-token-for-local-dev"  # what Gradio's mocked (off-Space) login hands to handlers


def suggest_repo(dataset: str, ipc, username: str | None) -> str:
    """`<user>/<source>-vldd-ipc<N>` (a bare name without a user: the push puts it in the signed-in account)."""
    from ..hub.names import source_short_name

    name = f"{source_short_name(dataset or 'sample')}-vldd-ipc{parse_int(ipc or 1, 'ipc')}"
    return f"{username}/{name}" if username else name


def push_token(oauth_token: str | None, *, on_space: bool) -> str | None:
    """The token to push with: the visitor's OAuth token. Off a Space, Gradio's mocked login stands for this
    machine's own login, so its placeholder is swapped for that token; on a Space it never is."""
    if not oauth_token:
        return None
    if oauth_token == GRADIO_MOCK_TOKEN and not on_space:
        from huggingface_hub import get_token

        return get_token()
    return oauth_token


@dataclass
class PublishView:
    message: str  # markdown: where it went, or why it did not
    snippet: str  # python code that loads it ("" when nothing was pushed)
    url: str | None = None


SIGN_IN_FIRST = ("**Sign in with Hugging Face first** (the button above): the distilled set is pushed to your own "
                 "account, with your permission, and nothing is published without it.")


def publish(run_dir: str | Path, repo_id: str, private: bool, token: str | None) -> PublishView:
    """Pushes the session's distilled set to the Hub with the visitor's token (never logged or shown)."""
    if not token:
        return PublishView(SIGN_IN_FIRST, "")
    run_dir = Path(run_dir)
    if not (run_dir / "dataset").is_dir():
        return PublishView("**Nothing to publish yet**: run the Generate tab first.", "")
    from ..hub.push import push_distilled

    result = push_distilled(run_dir, (repo_id or "").strip() or None, private=private, token=token)
    snippet = (f'from datasets import load_dataset\n\nds = load_dataset("{result.repo_id}", "{result.config_name}", '
               'split="train")')
    visibility = "private" if private else "public"
    message = (f"Published {result.num_rows} images to [{result.repo_id}]({result.url}) ({visibility}, configuration "
               f"`{result.config_name}`).")
    return PublishView(message, snippet, result.url)


def oauth_mode(on_space: bool) -> str:
    """"space": real Sign in with Hugging Face. "local": off a Space, Gradio mocks the button with this machine's
    login, which must exist and answer `whoami`. "off": neither, so no button is shown (Gradio would fail to start)."""
    if on_space:
        return "space"
    try:
        from huggingface_hub import get_token, whoami

        token = get_token()
        if token and whoami(token).get("type") == "user":
            return "local"
    except Exception as err:  # offline, invalid token, ...
        logger.info("no local Hugging Face login usable for the sign-in button (%s)", type(err).__name__)
    return "off"

