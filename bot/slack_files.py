"""Reading a file someone gave the reset form (`file_input`) through the Web API.

`files.info` says where the file is; its content is fetched with the bot token, and only from
the Slack host the WebClient itself talks to (or that host's `files.` host, where Slack keeps
files): a url anywhere else is refused before any request, so the token never leaves Slack.
Redirects are not followed. At most `MAX_FILE_BYTES` are read: past that, reading stops.
"""

from __future__ import annotations

import urllib.request
from http.client import HTTPResponse
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import urlsplit

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from blocks.ids import USERS_FILE
from blocks.text import (
    FILE_NOT_FROM_SLACK,
    FILE_UNREADABLE,
    file_too_large,
)
from core.errors import InputError

#: Slack's own limit for a file_input upload.
MAX_FILE_BYTES = 10 * 1024 * 1024
CHUNK = 64 * 1024


class FileRefused(InputError):
    """The file cannot be read, or not safely; the text says why, for the person who gave it."""

    def __init__(self, message: str) -> None:
        super().__init__(message, field=USERS_FILE)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect would carry the token's header to wherever it points: never follow one."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def download_file(client: WebClient, file_id: str, limit: int = MAX_FILE_BYTES) -> bytes:
    """The content of a file given in Slack, read with the bot token; FileRefused otherwise."""
    try:
        answer = client.files_info(file=file_id)
    except SlackApiError as error:
        raise FileRefused(FILE_UNREADABLE.format(reason=error.response.get("error"))) from None
    except (OSError, URLError) as error:
        raise FileRefused(FILE_UNREADABLE.format(reason=type(error).__name__)) from None
    info = answer.get("file")
    if not isinstance(info, dict):
        raise FileRefused(FILE_UNREADABLE.format(reason="no file in the answer"))
    size = info.get("size")
    if isinstance(size, int) and size > limit:
        raise FileRefused(file_too_large(size, limit))
    url = info.get("url_private_download") or info.get("url_private")
    if not isinstance(url, str) or not on_slack_host(url, client.base_url):
        raise FileRefused(FILE_NOT_FROM_SLACK)
    return _fetch(client, url, limit)


def on_slack_host(url: str, api_url: str) -> bool:
    """Whether `url` is on the client's own Slack host (same scheme and port), or its
    `files.` host: where Slack serves `url_private_download` (files.slack.com for slack.com)."""
    target, api = urlsplit(url), urlsplit(api_url)
    if not api.hostname or target.username is not None or target.password is not None:
        return False
    hosts = {api.hostname, f"files.{api.hostname}"}
    return (target.scheme in ("http", "https") and target.scheme == api.scheme
            and target.hostname in hosts
            and target.port == api.port)


def _fetch(client: WebClient, url: str, limit: int) -> bytes:
    proxies = {"http": client.proxy, "https": client.proxy} if client.proxy else {}
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler(proxies),
        urllib.request.HTTPSHandler(context=client.ssl),
        _NoRedirects(),
    )
    # The url was checked (on_slack_host): http(s), on the client's own Slack host.
    request = urllib.request.Request(  # noqa: S310
        url, headers={"Authorization": f"Bearer {client.token}"}
    )
    try:
        with opener.open(request, timeout=client.timeout) as response:
            return _read_text_response(response, limit)
    except HTTPError as error:
        raise FileRefused(FILE_UNREADABLE.format(reason=f"HTTP {error.code}")) from None
    except (OSError, URLError) as error:
        raise FileRefused(FILE_UNREADABLE.format(reason=type(error).__name__)) from None


def _read_text_response(response: HTTPResponse, limit: int) -> bytes:
    if response.status != 200:
        raise FileRefused(FILE_UNREADABLE.format(reason=f"HTTP {response.status}"))
    if response.headers.get_content_type() == "text/html":
        # Slack answers a download it will not give (a wrong token) with its sign-in page.
        raise FileRefused(FILE_UNREADABLE.format(reason="Slack sent a web page"))
    chunks: list[bytes] = []
    read = 0
    while True:
        chunk = response.read(CHUNK)
        if not chunk:
            return b"".join(chunks)
        read += len(chunk)
        if read > limit:
            raise FileRefused(file_too_large(read, limit, at_least=True))
        chunks.append(chunk)
