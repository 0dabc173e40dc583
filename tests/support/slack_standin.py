"""A local stand-in of the Slack Web API: a real HTTP server that slack_sdk's WebClient talks to.

Point a client at it with `WebClient(token=standin.token, base_url=standin.api_url)` (or
`standin.apply_to(settings)`). It records every request, answers the methods resetbot uses the way
Slack does (token check, Block Kit limits, channel membership, message state, file uploads), and
injects faults on demand: an error answer, HTTP 429 with `Retry-After`, or HTTP 500/503.

Every recorded call carries its raw bytes, so a test can prove that no secret ever reached Slack.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from tests.support.servers import stop_serving

if TYPE_CHECKING:
    from core.settings import Settings

TEST_BOT_TOKEN = "xoxb-test-token"
#: The bot scopes the app's manifest asks for (what `provided` lists in a missing_scope answer).
BOT_SCOPES = ("commands", "chat:write", "im:write", "files:write", "usergroups:read",
              "groups:read")
#: The method name under which uploads to a `files.getUploadURLExternal` URL are recorded.
UPLOAD = "upload"
#: The recorded "method" of a file download (GET of a url_private_download).
DOWNLOAD = "files.download"
#: Give this as the method to a fault to hit whichever method is called next.
ANY_METHOD = "*"

# Parameters Slack accepts as JSON text inside a form body.
_JSON_PARAMS = ("blocks", "attachments", "view", "files", "metadata")

Json = dict[str, Any]


class SlackError(Exception):
    """An `ok: false` answer, with Slack's error code and optional detail messages."""

    def __init__(self, error: str, messages: list[str] | None = None, **extra: str) -> None:
        super().__init__(error)
        self.error = error
        self.messages = messages or []
        #: Fields Slack adds to some errors (`missing_scope`: `needed`, `provided`).
        self.extra = extra

    def body(self) -> Json:
        answer: Json = {"ok": False, "error": self.error, **self.extra}
        if self.messages:
            answer["response_metadata"] = {"messages": self.messages}
        return answer


@dataclass(frozen=True)
class RecordedCall:
    """One HTTP request the stand-in received, and what it answered."""

    method: str
    params: Json
    headers: dict[str, str]  # lower-case names
    raw: bytes  # request line target + body, for scanning
    status: int
    response: Json
    at: float

    @property
    def ok(self) -> bool:
        return self.status == 200 and bool(self.response.get("ok"))

    @property
    def error(self) -> str | None:
        error = self.response.get("error")
        return str(error) if error is not None else None


@dataclass
class Channel:
    id: str
    name: str
    bot_is_member: bool = True
    archived: bool = False
    im_user: str | None = None  # set for a DM channel with that user
    private: bool = False  # a private channel; channels are public unless said otherwise

    @property
    def is_public(self) -> bool:
        """Readable by every member of the workspace: a public channel, not a DM."""
        return not self.private and self.im_user is None


@dataclass
class Message:
    channel: str
    ts: str
    text: str
    blocks: list[Json]
    thread_ts: str | None
    user: str
    updates: int = 0
    files: list[str] = field(default_factory=list)


@dataclass
class UploadedFile:
    id: str
    filename: str
    length: int
    content: bytes | None = None
    title: str | None = None
    channel: str | None = None
    thread_ts: str | None = None
    initial_comment: str | None = None

    @property
    def text(self) -> str:
        return (self.content or b"").decode("utf-8")


@dataclass
class SharedFile:
    """A file someone gave a file_input: files.info describes it, its url serves it."""

    id: str
    name: str
    filetype: str
    content: bytes
    #: Where files.info says it is (None: served by the stand-in itself).
    url: str | None = None
    #: What files.info and the view state say its size is (None: the content's).
    size: int | None = None


@dataclass
class _Fault:
    method: str
    kind: str  # "error", "rate_limit", "server_error"
    remaining: int
    error: str = ""
    retry_after: int = 1
    status: int = 500


class SlackStandIn:
    """The stand-in server. Start it, hand `api_url` to a WebClient, inspect `calls()`."""

    def __init__(
        self,
        token: str = TEST_BOT_TOKEN,
        *,
        bot_user_id: str = "UBOTRESET",
        team_id: str = "T0LIBRARY",
        join_unknown_channels: bool = True,
    ) -> None:
        self.token = token
        self.bot_user_id = bot_user_id
        self.bot_id = "BRESETBOT"
        self.team_id = team_id
        #: Set: auth.test names the workspace's Enterprise Grid org, as Slack does inside one.
        self.enterprise_id: str | None = None
        #: Set: auth.test names the app too (Slack's answer for a bot token may leave it out).
        self.app_id: str | None = None
        #: Unregistered C/G channel ids count as channels the bot is in (else channel_not_found).
        self.join_unknown_channels = join_unknown_channels
        self._cond = threading.Condition(threading.RLock())
        self._calls: list[RecordedCall] = []
        self._faults: list[_Fault] = []
        self._channels: dict[str, Channel] = {}
        self._messages: dict[str, list[Message]] = {}
        self._ephemerals: list[Json] = []
        self._views: dict[str, Json] = {}
        self._home: dict[str, Json] = {}
        self._usergroups: dict[str, list[str]] = {}
        self._users: dict[str, Json] = {}
        #: Users deactivated (user_disabled) or gone from the workspace (user_not_found).
        self._disabled: set[str] = set()
        self._gone: set[str] = set()
        #: Bot scopes the app was installed without (missing_scope on the methods needing them).
        self._missing_scopes: set[str] = set()
        self._files: dict[str, UploadedFile] = {}
        self._shared: dict[str, SharedFile] = {}
        self._ids = itertools.count(1)
        self._ts_base = int(time.time())
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> SlackStandIn:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        server.daemon_threads = True
        server.standin = self  # type: ignore[attr-defined]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05},
            name="slack-standin", daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            stop_serving(self._server, self._thread)
        self._server = None
        self._thread = None

    def __enter__(self) -> SlackStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "start() the stand-in first"
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def api_url(self) -> str:
        """What to pass as WebClient(base_url=...) or SLACK_API_URL (ends with a slash)."""
        return f"{self.base_url}api/"

    def apply_to(self, settings: Settings) -> Settings:
        """The same settings, pointed at this stand-in with its bot token."""
        return replace(settings, slack_bot_token=self.token, slack_api_url=self.api_url)

    # ---- what happened -----------------------------------------------------------------------

    def calls(self, method: str | None = None) -> list[RecordedCall]:
        """Every request received so far (or those for one method), oldest first."""
        with self._cond:
            return [c for c in self._calls if method is None or c.method == method]

    def count(self, method: str | None = None, *, ok_only: bool = False) -> int:
        return sum(1 for c in self.calls(method) if c.ok or not ok_only)

    def count_by_method(self, *, ok_only: bool = False) -> dict[str, int]:
        """Requests per method name; `ok_only` leaves out the faulted and refused ones."""
        return dict(Counter(c.method for c in self.calls() if c.ok or not ok_only))

    def clear_calls(self) -> None:
        with self._cond:
            self._calls.clear()

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        """Block until `predicate()` holds (re-checked after every request); False on timeout."""
        with self._cond:
            return self._cond.wait_for(predicate, timeout)

    def wait_for_call(
        self, method: str, *, count: int = 1, timeout: float = 10.0, ok_only: bool = True
    ) -> RecordedCall:
        """The `count`-th call of `method`, waiting for it; AssertionError naming what came."""
        if not self.wait_for(lambda: self.count(method, ok_only=ok_only) >= count, timeout):
            raise AssertionError(
                f"no {count} {method} call(s) within {timeout}s; got {self.count_by_method()}"
            )
        matching = [c for c in self.calls(method) if c.ok or not ok_only]
        return matching[count - 1]

    def requests_containing(self, needle: str | bytes) -> list[RecordedCall]:
        """Recorded requests whose raw bytes contain `needle` in any common encoding.

        Looks for the text itself, its JSON-escaped form and its form-encoded form.
        """
        from urllib.parse import quote, quote_plus

        text = needle.decode("utf-8") if isinstance(needle, bytes) else needle
        forms = {
            text.encode("utf-8"),
            json.dumps(text)[1:-1].encode("utf-8"),
            json.dumps(text, ensure_ascii=False)[1:-1].encode("utf-8"),
            quote_plus(text).encode("ascii"),
            quote(text).encode("ascii"),
        }
        return [c for c in self.calls() if any(form in c.raw for form in forms)]

    def messages(self, channel: str) -> list[Message]:
        """Top-level messages and thread replies in a channel, in posting order."""
        with self._cond:
            return list(self._messages.get(channel, []))

    def message(self, channel: str, ts: str) -> Message:
        with self._cond:
            for message in self._messages.get(channel, []):
                if message.ts == ts:
                    return message
        raise KeyError(f"no message {ts} in {channel}")

    def top_level(self, channel: str) -> list[Message]:
        return [m for m in self.messages(channel) if m.thread_ts is None]

    def thread(self, channel: str, ts: str) -> list[Message]:
        """Replies in the thread under `ts` (not the parent), in posting order."""
        return [m for m in self.messages(channel) if m.thread_ts == ts]

    def ephemerals(self) -> list[Json]:
        with self._cond:
            return list(self._ephemerals)

    def views(self) -> list[Json]:
        """Modals opened or updated, latest state of each."""
        with self._cond:
            return list(self._views.values())

    def home_view(self, user_id: str) -> Json | None:
        with self._cond:
            return self._home.get(user_id)

    def files(self, channel: str | None = None) -> list[UploadedFile]:
        """Uploaded files; with a channel, only those completed (shared) into it."""
        with self._cond:
            return [f for f in self._files.values() if channel is None or f.channel == channel]

    def files_in_public_channels(self) -> list[UploadedFile]:
        """Files shared where every member of the workspace can read them."""
        with self._cond:
            return [f for f in self._files.values()
                    if f.channel is not None and self._channel_record(f.channel).is_public]

    # ---- arranging the workspace ----------------------------------------------------------

    def share_file(
        self, content: bytes, name: str = "users.csv", *, filetype: str = "csv",
        url: str | None = None, size: int | None = None,
    ) -> str:
        """A file as if a person had just given it in a file_input; returns its id."""
        with self._cond:
            file_id = self._next_id("F")
            self._shared[file_id] = SharedFile(file_id, name, filetype, content, url, size)
            return file_id

    def file_json(self, file_id: str) -> Json:
        """The file as files.info and a view_submission's file_input state describe it."""
        shared = self._shared[file_id]
        url = shared.url or f"{self.base_url}files-pri/{self.team_id}-{file_id}/{shared.name}"
        return {
            "id": file_id, "created": self._ts_base, "timestamp": self._ts_base,
            "name": shared.name, "title": shared.name, "mimetype": "text/csv",
            "filetype": shared.filetype, "pretty_type": shared.filetype.upper(),
            "user": "U0ADMIN", "size": shared.size if shared.size is not None
            else len(shared.content),
            "url_private": url, "url_private_download": url.rstrip("/") + "/download",
            "is_external": False, "mode": "hosted",
        }

    def downloads(self) -> list[RecordedCall]:
        return self.calls(DOWNLOAD)

    def _handle_download(self, path: str, headers: dict[str, str]) -> tuple[int, bytes, str]:
        """A file's content for its url, with the bot token only: without it Slack answers
        with its sign-in page, as here (an HTML page, never the file)."""
        authorization = headers.get("authorization", "")
        if authorization != f"Bearer {self.token}":
            return 200, b"<!DOCTYPE html><html>Sign in to Slack</html>", "text/html"
        parts = path.split("/")  # /files-pri/<team>-<id>/<name>/download
        file_id = parts[2].rsplit("-", 1)[-1] if len(parts) > 2 else ""
        with self._cond:
            shared = self._shared.get(file_id)
        if shared is None or shared.url is not None:
            return 404, b"file not found", "text/plain"
        return 200, shared.content, "application/octet-stream"

    def add_channel(
        self, channel_id: str, *, name: str | None = None, member: bool = True,
        archived: bool = False, private: bool = False,
    ) -> Channel:
        with self._cond:
            channel = Channel(channel_id, name or channel_id.lower(), member, archived,
                              private=private)
            self._channels[channel_id] = channel
            return channel

    def set_member(self, channel_id: str, member: bool) -> None:
        """Put the bot in a channel or take it out (posting then answers not_in_channel)."""
        with self._cond:
            self._channel_record(channel_id).bot_is_member = member

    def archive(self, channel_id: str) -> None:
        with self._cond:
            self._channel_record(channel_id).archived = True

    def set_usergroup(self, usergroup_id: str, members: list[str]) -> None:
        with self._cond:
            self._usergroups[usergroup_id] = list(members)

    def add_user(self, user_id: str, *, name: str = "", real_name: str = "") -> None:
        with self._cond:
            self._users[user_id] = {"name": name or user_id.lower(), "real_name": real_name}

    def deactivate_user(self, user_id: str) -> None:
        """The user's account is deactivated: a DM with them answers `user_disabled`."""
        with self._cond:
            self._disabled.add(user_id)

    def remove_user(self, user_id: str) -> None:
        """The user is gone from the workspace: a DM with them answers `user_not_found`."""
        with self._cond:
            self._gone.add(user_id)

    def revoke_scope(self, scope: str) -> None:
        """The app lacks this bot scope: methods needing it answer `missing_scope` with the
        `needed` and `provided` fields Slack adds."""
        with self._cond:
            self._missing_scopes.add(scope)

    def _require_scope(self, scope: str) -> None:
        if scope in self._missing_scopes:
            provided = ",".join(sorted(set(BOT_SCOPES) - self._missing_scopes))
            raise SlackError("missing_scope", needed=scope, provided=provided)

    def dm_channel(self, user_id: str) -> str:
        """The id conversations.open gives for a DM between the bot and `user_id`."""
        return "D" + user_id.lstrip("UW")

    def _channel_record(self, channel_id: str) -> Channel:
        if channel_id not in self._channels:
            self._channels[channel_id] = Channel(channel_id, channel_id.lower())
        return self._channels[channel_id]

    # ---- fault injection --------------------------------------------------------------------

    def fail_next(self, method: str, error: str = "not_in_channel", times: int = 1) -> None:
        """The next `times` calls of `method` answer HTTP 200 `{"ok": false, "error": error}`."""
        self._add_fault(_Fault(method, "error", times, error=error))

    def rate_limit_next(self, method: str, retry_after: int = 1, times: int = 1) -> None:
        """The next `times` calls of `method` answer HTTP 429 with `Retry-After: retry_after`."""
        self._add_fault(_Fault(method, "rate_limit", times, retry_after=retry_after))

    def server_error_next(self, method: str, times: int = 1, status: int = 500) -> None:
        """The next `times` calls of `method` answer HTTP `status` (500 or 503)."""
        if status not in (500, 502, 503, 504):
            raise ValueError("a server error is 500, 502, 503 or 504")
        self._add_fault(_Fault(method, "server_error", times, status=status))

    def clear_faults(self) -> None:
        with self._cond:
            self._faults.clear()

    def pending_faults(self) -> int:
        with self._cond:
            return sum(f.remaining for f in self._faults)

    def _add_fault(self, fault: _Fault) -> None:
        if fault.remaining < 1:
            raise ValueError("times must be at least 1")
        with self._cond:
            self._faults.append(fault)

    def _take_fault(self, method: str, kinds: tuple[str, ...]) -> _Fault | None:
        for fault in self._faults:
            if fault.kind in kinds and fault.method in (method, ANY_METHOD):
                fault.remaining -= 1
                if fault.remaining == 0:
                    self._faults.remove(fault)
                return fault
        return None

    # ---- serving ------------------------------------------------------------------------------

    def _record(self, call: RecordedCall) -> None:
        with self._cond:
            self._calls.append(call)
            self._cond.notify_all()

    def _handle(
        self, method: str, params: Json, headers: dict[str, str]
    ) -> tuple[int, Json, dict[str, str]]:
        """Status, JSON body and extra headers for one API request."""
        with self._cond:
            fault = self._take_fault(method, ("rate_limit", "server_error"))
            if fault is not None and fault.kind == "rate_limit":
                return 429, {"ok": False, "error": "ratelimited"}, {
                    "Retry-After": str(fault.retry_after)
                }
            if fault is not None:
                return fault.status, {"ok": False, "error": "fatal_error"}, {}
            try:
                self._check_token(params, headers)
                error = self._take_fault(method, ("error",))
                if error is not None:
                    raise SlackError(error.error)
                handler = _METHODS.get(method)
                if handler is None:
                    raise SlackError("unknown_method")
                return 200, {"ok": True, **handler(self, params)}, {}
            except SlackError as refused:
                return 200, refused.body(), {}

    def _check_token(self, params: Json, headers: dict[str, str]) -> None:
        authorization = headers.get("authorization", "")
        token = authorization[len("Bearer "):] if authorization.startswith("Bearer ") else None
        token = token or params.get("token")
        if not token:
            raise SlackError("not_authed")
        if token != self.token:
            raise SlackError("invalid_auth")

    def _handle_upload(self, file_id: str, body: bytes) -> tuple[int, bytes]:
        with self._cond:
            fault = self._take_fault(UPLOAD, ("rate_limit", "server_error", "error"))
            if fault is not None:
                return (429 if fault.kind == "rate_limit" else 500), b"upload failed"
            upload = self._files.get(file_id)
            if upload is None:
                return 404, b"no such upload url"
            upload.content = body
            return 200, f"OK - {len(body)}".encode()

    # ---- ids and lookups --------------------------------------------------------------------

    def _next_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):08d}"

    def _next_ts(self) -> str:
        n = next(self._ids)
        return f"{self._ts_base + n // 1_000_000}.{n % 1_000_000:06d}"

    def _postable_channel(self, params: Json) -> Channel:
        """The channel a post goes to, refusing as Slack does where the bot cannot post."""
        channel_id = str(params.get("channel") or params.get("channel_id") or "")
        if not channel_id:
            raise SlackError("channel_not_found")
        if channel_id[0] in "UW":  # a user id: Slack posts in the app's DM with them
            channel_id = self.dm_channel(channel_id)
            if channel_id not in self._channels:
                self._channels[channel_id] = Channel(
                    channel_id, channel_id.lower(), im_user=str(params.get("channel"))
                )
        channel = self._channels.get(channel_id)
        if channel is None:
            if channel_id[0] in "CG" and self.join_unknown_channels:
                channel = self._channel_record(channel_id)
            else:
                raise SlackError("channel_not_found")
        if channel.archived:
            raise SlackError("is_archived")
        if not channel.bot_is_member:
            raise SlackError("not_in_channel")
        return channel

    def _find_message(self, channel: str, ts: str) -> Message | None:
        for message in self._messages.get(channel, []):
            if message.ts == ts:
                return message
        return None


# ---- request parsing -------------------------------------------------------------------------


def _parse_body(content_type: str, body: bytes) -> Json:
    if not body:
        return {}
    media = content_type.split(";")[0].strip().lower()
    if media == "application/json":
        try:
            parsed = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise SlackError("invalid_json") from None
        if not isinstance(parsed, dict):
            raise SlackError("invalid_json")
        return parsed
    if media == "multipart/form-data":
        message = BytesParser(policy=HTTP).parsebytes(
            b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
        )
        form: Json = {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True)
            if isinstance(name, str) and isinstance(payload, bytes):
                form[name] = payload if part.get_filename() else payload.decode("utf-8")
        return _decode_json_params(form)
    form = dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
    return _decode_json_params(form)


def _decode_json_params(form: Json) -> Json:
    for name in _JSON_PARAMS:
        value = form.get(name)
        if isinstance(value, str) and value[:1] in "[{":
            try:
                form[name] = json.loads(value)
            except json.JSONDecodeError:
                raise SlackError(f"invalid_{name}") from None
    return form


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    @property
    def standin(self) -> SlackStandIn:
        return self.server.standin  # type: ignore[attr-defined,no-any-return]

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the recorded calls are the log."""

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        target = urlsplit(self.path)
        headers = {k.lower(): v for k, v in self.headers.items()}
        raw = target.path.encode() + b"?" + target.query.encode() + b"\n" + body
        if target.path.startswith("/upload/v1/"):
            file_id = target.path.rsplit("/", 1)[-1]
            status, answer = self.standin._handle_upload(file_id, body)
            self.standin._record(
                RecordedCall(UPLOAD, {"file_id": file_id}, headers, raw, status,
                             {"ok": status == 200}, time.time())
            )
            self._reply(status, answer, "text/plain; charset=utf-8", {})
            return
        if target.path.startswith("/files-pri/"):
            status, content, kind = self.standin._handle_download(target.path, headers)
            self.standin._record(
                RecordedCall(DOWNLOAD, {"path": target.path}, headers, raw[:200], status,
                             {"ok": status == 200 and kind != "text/html"}, time.time())
            )
            self._reply(status, content, kind, {})
            return
        if not target.path.startswith("/api/"):
            self._reply(404, b"not found", "text/plain", {})
            return
        method = target.path[len("/api/"):]
        params: Json = dict(parse_qsl(target.query, keep_blank_values=True))
        extra: dict[str, str] = {}
        try:
            params.update(_parse_body(headers.get("content-type", ""), body))
        except SlackError as refused:
            status, response = 200, refused.body()
        else:
            status, response, extra = self.standin._handle(method, params, headers)
        self.standin._record(
            RecordedCall(method, params, headers, raw, status, response, time.time())
        )
        self._reply(status, json.dumps(response).encode(), "application/json; charset=utf-8",
                    extra)

    def _reply(self, status: int, body: bytes, content_type: str, extra: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in extra.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


# ---- Block Kit validation ------------------------------------------------------------------


MAX_BLOCKS = {"message": 50, "modal": 100, "home": 100}


class _Checker:
    """Collects Slack-style messages: `[ERROR] what [json-pointer:/path]`."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def fail(self, path: str, what: str) -> None:
        self.problems.append(f"[ERROR] {what} [json-pointer:{path}]")

    def length(self, path: str, value: object, maximum: int, minimum: int = 1) -> None:
        if not isinstance(value, str):
            self.fail(path, "must be a string")
        elif len(value) > maximum:
            self.fail(path, f"must be less than {maximum + 1} characters")
        elif len(value) < minimum:
            self.fail(path, f"must be more than {minimum - 1} characters")

    def text(
        self, path: str, obj: object, maximum: int, *, plain_only: bool = False,
        required: bool = True,
    ) -> None:
        if obj is None:
            if required:
                self.fail(path, "missing required field")
            return
        if not isinstance(obj, dict):
            self.fail(path, "must be a text object")
            return
        kind = obj.get("type")
        allowed = ("plain_text",) if plain_only else ("plain_text", "mrkdwn")
        if kind not in allowed:
            self.fail(f"{path}/type", f"must be one of {', '.join(allowed)}")
        self.length(f"{path}/text", obj.get("text"), maximum)

    def blocks(self, blocks: object, surface: str, path: str = "/blocks") -> None:
        if not isinstance(blocks, list):
            self.fail(path, "must be an array")
            return
        limit = MAX_BLOCKS[surface]
        if len(blocks) > limit:
            self.fail(path, f"must contain at most {limit} items")
        block_ids: set[str] = set()
        for index, block in enumerate(blocks):
            here = f"{path}/{index}"
            if not isinstance(block, dict):
                self.fail(here, "must be an object")
                continue
            block_id = block.get("block_id")
            if block_id is not None:
                self.length(f"{here}/block_id", block_id, 255)
                if block_id in block_ids:
                    self.fail(f"{here}/block_id", "duplicate block_id")
                block_ids.add(str(block_id))
            self.block(here, block, surface)

    def block(self, path: str, block: Json, surface: str) -> None:
        kind = block.get("type")
        if kind == "section":
            if block.get("text") is None and block.get("fields") is None:
                self.fail(path, "must provide either text or fields")
            self.text(f"{path}/text", block.get("text"), 3000, required=False)
            fields = block.get("fields")
            if fields is not None:
                if not isinstance(fields, list) or not 1 <= len(fields) <= 10:
                    self.fail(f"{path}/fields", "must contain 1 to 10 items")
                else:
                    for i, item in enumerate(fields):
                        self.text(f"{path}/fields/{i}", item, 2000)
            if block.get("accessory") is not None:
                self.element(f"{path}/accessory", block["accessory"], set())
        elif kind == "header":
            self.text(f"{path}/text", block.get("text"), 150, plain_only=True)
        elif kind == "divider":
            pass
        elif kind == "context":
            elements = block.get("elements")
            if not isinstance(elements, list) or not 1 <= len(elements) <= 10:
                self.fail(f"{path}/elements", "must contain 1 to 10 items")
                return
            for i, element in enumerate(elements):
                if isinstance(element, dict) and element.get("type") == "image":
                    self.image(f"{path}/elements/{i}", element)
                else:
                    self.text(f"{path}/elements/{i}", element, 3000)
        elif kind == "actions":
            elements = block.get("elements")
            if not isinstance(elements, list) or not 1 <= len(elements) <= 25:
                self.fail(f"{path}/elements", "must contain 1 to 25 items")
                return
            action_ids: set[str] = set()
            for i, element in enumerate(elements):
                self.element(f"{path}/elements/{i}", element, action_ids)
        elif kind == "input":
            if surface == "message":
                self.fail(path, "input blocks are not allowed in messages")
            self.text(f"{path}/label", block.get("label"), 2000, plain_only=True)
            self.text(f"{path}/hint", block.get("hint"), 2000, plain_only=True, required=False)
            self.element(f"{path}/element", block.get("element"), set())
        elif kind == "image":
            self.image(path, block)
            self.text(f"{path}/title", block.get("title"), 2000, plain_only=True, required=False)
        elif kind in ("rich_text", "markdown", "file", "video"):
            pass
        else:
            self.fail(f"{path}/type", f"unknown block type {kind!r}")

    def image(self, path: str, image: Json) -> None:
        self.length(f"{path}/image_url", image.get("image_url"), 3000)
        self.length(f"{path}/alt_text", image.get("alt_text"), 2000)

    def element(self, path: str, element: object, action_ids: set[str]) -> None:
        if not isinstance(element, dict):
            self.fail(path, "missing required field")
            return
        action_id = element.get("action_id")
        if action_id is not None:
            self.length(f"{path}/action_id", action_id, 255)
            if action_id in action_ids:
                self.fail(f"{path}/action_id", "duplicate action_id")
            action_ids.add(str(action_id))
        self.text(f"{path}/placeholder", element.get("placeholder"), 150, plain_only=True,
                  required=False)
        if element.get("confirm") is not None:
            self.confirm(f"{path}/confirm", element["confirm"])
        kind = element.get("type")
        if kind == "button":
            self.text(f"{path}/text", element.get("text"), 75, plain_only=True)
            if element.get("value") is not None:
                self.length(f"{path}/value", element["value"], 2000)
            if element.get("url") is not None:
                self.length(f"{path}/url", element["url"], 3000)
            if element.get("style") not in (None, "primary", "danger"):
                self.fail(f"{path}/style", "must be primary or danger")
        elif kind in ("static_select", "multi_static_select"):
            if element.get("options") is None and element.get("option_groups") is None:
                self.fail(path, "must provide either options or option_groups")
            self.options(f"{path}/options", element.get("options"), 100, plain_only=True)
            self.initial_options(path, element)
        elif kind in ("external_select", "multi_external_select"):
            self.initial_options(path, element)
        elif kind in ("radio_buttons", "checkboxes"):
            self.options(f"{path}/options", element.get("options"), 10, plain_only=False,
                         required=True)
            self.initial_options(path, element)
        elif kind == "overflow":
            self.options(f"{path}/options", element.get("options"), 5, plain_only=True,
                         required=True)
        elif kind == "plain_text_input":
            max_length = element.get("max_length")
            if max_length is not None and not (isinstance(max_length, int) and
                                               1 <= max_length <= 3000):
                self.fail(f"{path}/max_length", "must be between 1 and 3000")
            if element.get("initial_value") is not None:
                self.length(f"{path}/initial_value", element["initial_value"], 3000, 0)
        elif kind in ("users_select", "multi_users_select", "conversations_select",
                      "multi_conversations_select", "channels_select", "multi_channels_select",
                      "datepicker", "timepicker", "datetimepicker", "email_text_input",
                      "number_input", "url_text_input", "image"):
            pass
        elif kind == "file_input":
            max_files = element.get("max_files", 10)
            if not (isinstance(max_files, int) and 1 <= max_files <= 10):
                self.fail(f"{path}/max_files", "must be between 1 and 10")
            filetypes = element.get("filetypes", [])
            if not (isinstance(filetypes, list) and all(isinstance(t, str) for t in filetypes)):
                self.fail(f"{path}/filetypes", "must be a list of strings")
        else:
            self.fail(f"{path}/type", f"unknown element type {kind!r}")

    def options(
        self, path: str, options: object, maximum: int, *, plain_only: bool,
        required: bool = False,
    ) -> None:
        if options is None:
            if required:
                self.fail(path, "missing required field")
            return
        if not isinstance(options, list) or not 1 <= len(options) <= maximum:
            self.fail(path, f"must contain 1 to {maximum} items")
            return
        for i, option in enumerate(options):
            self.option(f"{path}/{i}", option, plain_only)

    def option(self, path: str, option: object, plain_only: bool) -> None:
        if not isinstance(option, dict):
            self.fail(path, "must be an object")
            return
        self.text(f"{path}/text", option.get("text"), 75, plain_only=plain_only)
        self.length(f"{path}/value", option.get("value"), 150)
        self.text(f"{path}/description", option.get("description"), 75,
                  plain_only=plain_only, required=False)

    def initial_options(self, path: str, element: Json) -> None:
        initial = element.get("initial_options")
        if initial is not None:
            self.options(f"{path}/initial_options", initial, 100, plain_only=False)
        if element.get("initial_option") is not None:
            self.option(f"{path}/initial_option", element["initial_option"], False)

    def confirm(self, path: str, confirm: object) -> None:
        if not isinstance(confirm, dict):
            self.fail(path, "must be an object")
            return
        self.text(f"{path}/title", confirm.get("title"), 100, plain_only=True)
        self.text(f"{path}/text", confirm.get("text"), 300)
        self.text(f"{path}/confirm", confirm.get("confirm"), 30, plain_only=True)
        self.text(f"{path}/deny", confirm.get("deny"), 30, plain_only=True)

    def view(self, view: object, expected: tuple[str, ...]) -> None:
        if not isinstance(view, dict):
            self.fail("/view", "missing required field")
            return
        kind = view.get("type")
        if kind not in expected:
            self.fail("/view/type", f"must be {' or '.join(expected)}")
            return
        if kind == "modal":
            self.text("/view/title", view.get("title"), 24, plain_only=True)
            self.text("/view/submit", view.get("submit"), 24, plain_only=True, required=False)
            self.text("/view/close", view.get("close"), 24, plain_only=True, required=False)
            blocks = view.get("blocks")
            has_input = isinstance(blocks, list) and any(
                isinstance(b, dict) and b.get("type") == "input" for b in blocks
            )
            if has_input and view.get("submit") is None:
                self.fail("/view/submit", "required when the view has input blocks")
        for name, maximum in (("callback_id", 255), ("private_metadata", 3000),
                              ("external_id", 255)):
            if view.get(name) is not None:
                self.length(f"/view/{name}", view[name], maximum, 0)
        self.blocks(view.get("blocks"), str(kind), "/view/blocks")


def block_kit_problems(blocks: object, surface: str = "message") -> list[str]:
    """What Slack would say about these blocks on a surface (message, modal, home); [] if fine.

    The same checks the server runs, for unit tests of pure block builders.
    """
    checker = _Checker()
    checker.blocks(blocks, surface)
    return checker.problems


def view_problems(view: object) -> list[str]:
    """What views.open / views.publish would say about this view; [] if fine."""
    checker = _Checker()
    checker.view(view, ("modal", "home"))
    return checker.problems


def _check_message(params: Json) -> None:
    text, blocks = params.get("text"), params.get("blocks")
    if not text and not blocks and not params.get("attachments"):
        raise SlackError("no_text")
    if text is not None and len(str(text)) > 40_000:
        raise SlackError("msg_too_long")
    if blocks is not None:
        checker = _Checker()
        checker.blocks(blocks, "message")
        if checker.problems:
            raise SlackError("invalid_blocks", checker.problems)


def _check_view(view: object, expected: tuple[str, ...]) -> Json:
    checker = _Checker()
    checker.view(view, expected)
    if checker.problems:
        raise SlackError("invalid_arguments", checker.problems)
    assert isinstance(view, dict)
    return view


def _require(params: Json, *names: str) -> None:
    missing = [n for n in names if params.get(n) in (None, "")]
    if missing:
        raise SlackError(
            "invalid_arguments",
            [f"[ERROR] missing required field: {n}" for n in missing],
        )


# ---- the methods --------------------------------------------------------------------------------


def _auth_test(s: SlackStandIn, params: Json) -> Json:
    answer: Json = {
        "url": "https://library.slack.com/", "team": "Library", "user": "resetbot",
        "team_id": s.team_id, "user_id": s.bot_user_id, "bot_id": s.bot_id,
        "is_enterprise_install": False,
    }
    if s.enterprise_id is not None:
        answer["enterprise_id"] = s.enterprise_id
    if s.app_id is not None:
        answer["app_id"] = s.app_id
    return answer


def _chat_post_message(s: SlackStandIn, params: Json) -> Json:
    channel = s._postable_channel(params)
    _check_message(params)
    thread_ts = params.get("thread_ts") or None
    if thread_ts is not None and s._find_message(channel.id, str(thread_ts)) is None:
        raise SlackError("invalid_thread_ts")
    message = Message(
        channel.id, s._next_ts(), str(params.get("text") or ""),
        list(params.get("blocks") or []), str(thread_ts) if thread_ts else None, s.bot_user_id,
    )
    s._messages.setdefault(channel.id, []).append(message)
    return {"channel": channel.id, "ts": message.ts, "message": _message_json(s, message)}


def _chat_update(s: SlackStandIn, params: Json) -> Json:
    _require(params, "channel", "ts")
    channel = s._postable_channel(params)
    message = s._find_message(channel.id, str(params["ts"]))
    if message is None:
        raise SlackError("message_not_found")
    if message.user != s.bot_user_id:
        raise SlackError("cant_update_message")
    _check_message(params)
    if params.get("text") is not None:
        message.text = str(params["text"])
    if params.get("blocks") is not None:
        message.blocks = list(params["blocks"])
    message.updates += 1
    return {"channel": channel.id, "ts": message.ts, "text": message.text,
            "message": _message_json(s, message)}


def _chat_post_ephemeral(s: SlackStandIn, params: Json) -> Json:
    _require(params, "user")
    channel = s._postable_channel(params)
    _check_message(params)
    ephemeral = {"channel": channel.id, "user": params["user"], "text": params.get("text", ""),
                 "blocks": params.get("blocks") or [], "message_ts": s._next_ts()}
    s._ephemerals.append(ephemeral)
    return {"message_ts": ephemeral["message_ts"]}


def _message_json(s: SlackStandIn, message: Message) -> Json:
    answer: Json = {"type": "message", "user": message.user, "bot_id": s.bot_id,
                    "text": message.text, "blocks": message.blocks, "ts": message.ts}
    if message.thread_ts:
        answer["thread_ts"] = message.thread_ts
    return answer


def _conversations_open(s: SlackStandIn, params: Json) -> Json:
    users = [u for u in str(params.get("users") or "").split(",") if u]
    if not users and not params.get("channel"):
        raise SlackError("users_list_not_supplied")
    if len(users) != 1:
        raise SlackError("not_enough_users" if not users else "too_many_users")
    user = users[0]
    s._require_scope("im:write")
    if user[:1] not in ("U", "W") or user in s._gone:
        raise SlackError("user_not_found")
    if user in s._disabled:
        raise SlackError("user_disabled")
    channel_id = s.dm_channel(user)
    channel = s._channels.get(channel_id)
    if channel is None:
        channel = Channel(channel_id, channel_id.lower(), im_user=user)
        s._channels[channel_id] = channel
    return {"channel": {"id": channel_id, "is_im": True, "user": user}}


def _conversations_info(s: SlackStandIn, params: Json) -> Json:
    _require(params, "channel")
    channel = s._channels.get(str(params["channel"]))
    if channel is None:
        raise SlackError("channel_not_found")
    return {"channel": {"id": channel.id, "name": channel.name, "is_private": not channel.is_public,
                        "is_im": channel.im_user is not None, "is_archived": channel.archived,
                        "is_member": channel.bot_is_member}}


def _usergroups_users_list(s: SlackStandIn, params: Json) -> Json:
    _require(params, "usergroup")
    members = s._usergroups.get(str(params["usergroup"]))
    if members is None:
        raise SlackError("no_such_subteam")
    return {"users": list(members)}


def _users_info(s: SlackStandIn, params: Json) -> Json:
    _require(params, "user")
    user = str(params["user"])
    if user[:1] not in ("U", "W"):
        raise SlackError("user_not_found")
    known = s._users.get(user, {"name": user.lower(), "real_name": ""})
    return {"user": {"id": user, "team_id": s.team_id, "name": known["name"],
                     "real_name": known["real_name"],
                     "profile": {"real_name": known["real_name"],
                                 "display_name": known["name"]}}}


def _views_open(s: SlackStandIn, params: Json) -> Json:
    if not params.get("trigger_id") and not params.get("interactivity_pointer"):
        raise SlackError("invalid_arguments", ["[ERROR] missing required field: trigger_id"])
    view = _check_view(params.get("view"), ("modal",))
    stored = _store_view(s, s._next_id("V"), view)
    return {"view": stored}


def _views_update(s: SlackStandIn, params: Json) -> Json:
    view = _check_view(params.get("view"), ("modal", "home"))
    view_id = params.get("view_id")
    external_id = params.get("external_id")
    if view_id is None and external_id is None:
        raise SlackError("invalid_arguments", ["[ERROR] missing required field: view_id"])
    if view_id is None:
        view_id = next((i for i, v in s._views.items() if v.get("external_id") == external_id),
                       None)
    current = s._views.get(str(view_id)) if view_id is not None else None
    if current is None:
        raise SlackError("not_found")
    if params.get("hash") and params["hash"] != current["hash"]:
        raise SlackError("hash_conflict")
    return {"view": _store_view(s, str(view_id), view)}


def _views_publish(s: SlackStandIn, params: Json) -> Json:
    _require(params, "user_id")
    view = _check_view(params.get("view"), ("home",))
    stored = dict(view, id=s._next_id("V"), hash=s._next_id("h"), team_id=s.team_id)
    s._home[str(params["user_id"])] = stored
    return {"view": stored}


def _store_view(s: SlackStandIn, view_id: str, view: Json) -> Json:
    stored = dict(
        view, id=view_id, hash=s._next_id("h"), team_id=s.team_id, app_id="ARESETBOT",
        bot_id=s.bot_id, state={"values": {}}, callback_id=view.get("callback_id", ""),
        private_metadata=view.get("private_metadata", ""),
    )
    s._views[view_id] = stored
    return stored


def _files_info(s: SlackStandIn, params: Json) -> Json:
    _require(params, "file")
    if str(params["file"]) not in s._shared:
        raise SlackError("file_not_found")
    return {"file": s.file_json(str(params["file"])), "comments": [], "response_metadata": {
        "next_cursor": ""}}


def _files_get_upload_url(s: SlackStandIn, params: Json) -> Json:
    s._require_scope("files:write")
    _require(params, "filename", "length")
    try:
        length = int(params["length"])
    except (TypeError, ValueError):
        raise SlackError("invalid_arguments", ["[ERROR] length must be an integer"]) from None
    file_id = s._next_id("F")
    s._files[file_id] = UploadedFile(file_id, str(params["filename"]), length)
    return {"upload_url": f"{s.base_url}upload/v1/{file_id}", "file_id": file_id}


def _files_complete_upload(s: SlackStandIn, params: Json) -> Json:
    files = params.get("files")
    if not isinstance(files, list) or not files:
        raise SlackError("invalid_arguments", ["[ERROR] missing required field: files"])
    channel: Channel | None = None
    if params.get("channel_id") or params.get("channels"):
        channel = s._postable_channel(
            {"channel": params.get("channel_id") or str(params["channels"]).split(",")[0]}
        )
    thread_ts = params.get("thread_ts") or None
    if thread_ts and channel is not None and s._find_message(channel.id, str(thread_ts)) is None:
        raise SlackError("invalid_thread_ts")
    completed: list[Json] = []
    for item in files:
        upload = s._files.get(str(item.get("id"))) if isinstance(item, dict) else None
        if upload is None or upload.content is None:
            raise SlackError("file_not_found")
        if len(upload.content) != upload.length:
            raise SlackError("file_upload_size_mismatch")
        upload.title = item.get("title") or upload.filename
        upload.channel = channel.id if channel else None
        upload.thread_ts = str(thread_ts) if thread_ts else None
        upload.initial_comment = params.get("initial_comment")
        completed.append({"id": upload.id, "name": upload.filename, "title": upload.title,
                          "size": upload.length})
    if channel is not None and thread_ts:
        parent = s._find_message(channel.id, str(thread_ts))
        if parent is not None:
            parent.files.extend(f["id"] for f in completed)
    return {"files": completed}


_METHODS: dict[str, Callable[[SlackStandIn, Json], Json]] = {
    "auth.test": _auth_test,
    "chat.postMessage": _chat_post_message,
    "chat.update": _chat_update,
    "chat.postEphemeral": _chat_post_ephemeral,
    "conversations.info": _conversations_info,
    "conversations.open": _conversations_open,
    "usergroups.users.list": _usergroups_users_list,
    "users.info": _users_info,
    "views.open": _views_open,
    "views.update": _views_update,
    "views.publish": _views_publish,
    "files.info": _files_info,
    "files.getUploadURLExternal": _files_get_upload_url,
    "files.completeUploadExternal": _files_complete_upload,
}


@pytest.fixture
def slack_standin() -> Iterator[SlackStandIn]:
    """A started Slack Web API stand-in with bot token `xoxb-test-token`, stopped afterwards."""
    standin = SlackStandIn(TEST_BOT_TOKEN)
    standin.start()
    try:
        yield standin
    finally:
        standin.stop()
