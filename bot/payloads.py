"""Reading what Slack sends, trusting none of it: shapes, view state, ids, channels.

Anyone holding the signing secret (or replaying a request) can send any JSON; everything here
turns bad input into a refusal naming the field, never into an exception that reaches Slack as
a 500.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from blocks.ids import (
    NO_EMAIL,
    NO_EMAIL_PASSWORD,
    PASSWORD,
    REQUIRE_CHANGE,
    REQUIRE_CHANGE_YES,
    SCOPE,
    SKIP_LOCKED,
    SKIP_LOCKED_YES,
    START_AT,
    USERS,
    USERS_FILE,
)
from blocks.text import (
    BUTTON_NAMES_NO_TASK,
    CHOOSE_SCOPE,
    FILE_NEEDS_SELECTED_SCOPE,
    FILE_OR_PICKED,
    FILE_UNREADABLE_SHAPE,
    PASSWORD_UNREADABLE,
    PICKED_UNREADABLE,
    START_AT_UNREADABLE,
    file_too_large,
    password_too_long,
    picked_not_in_directory,
    too_many_picked,
)
from blocks.views import PASSWORD_MAX_LENGTH
from core.directory.ids import is_user_id
from core.errors import InputError
from core.models import NoEmailChoice, Scope
from core.passwords import normalised
from core.tasks import MAX_SELECTION, RequestInvalid, ResetRequest

_CHANNEL_ID = re.compile(r"^[CGD][A-Z0-9]{2,30}$")
_USER_ID = re.compile(r"^[UW][A-Z0-9]{2,30}$")
_TASK_ID = re.compile(r"^[0-9]{1,12}$")
_FILE_ID = re.compile(r"^F[A-Z0-9]{2,30}$")
_VIEW_ID = re.compile(r"^V[A-Z0-9]{2,30}$")
_PENDING_ID = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
#: The largest id an INTEGER column holds (PostgreSQL's int4); a bigger number names nothing,
#: and PostgreSQL refuses it as a parameter (a 500) instead of finding no row.
MAX_ID = 2**31 - 1
NAME_LIMIT = 255
#: Slack's limit for a file_input upload (bot.slack_files reads no more either).
MAX_FILE_BYTES = 10 * 1024 * 1024
_NO_EMAIL_CHOICES = frozenset(choice.value for choice in NoEmailChoice)
_SCOPES = frozenset(scope.value for scope in Scope)


# ---- shape of a whole request ----------------------------------------------------------------

_OPTIONAL_OBJECTS = ("view", "event", "message", "previous_message", "item", "container",
                     "assistant_thread", "function_data", "state")
_ID_HOLDERS = ("user", "team", "enterprise", "channel")
#: Bolt reads these whenever the key is present (`"view" in body`), even as null.
_OBJECTS_IF_PRESENT = ("view", "event")
#: Objects Bolt looks into for ids with the same code as the top level, to any depth.
_NESTED_ID_SOURCES = ("event", "message", "previous_message", "item", "assistant_thread")


def payload_problem(body: object) -> str | None:
    """Why `body` is not something Slack would send (None when it looks sound).

    Bolt reads these fields without checking their types; a wrong type there would be a 500.
    """
    if not isinstance(body, dict):
        return "the payload is not an object"
    problem = _ids_problem(body)
    if problem:
        return problem
    for name in _OPTIONAL_OBJECTS:
        present = name in body if name in _OBJECTS_IF_PRESENT else body.get(name) is not None
        if present and not isinstance(body[name], dict):
            return f"{name} must be an object"
    for name in ("response_urls", "actions"):  # authorizations: checked with the ids
        value = body.get(name)
        # Bolt takes `"response_urls" in body` as a list to read, even when it is null.
        present = name in body if name == "response_urls" else value is not None
        if present and not _list_of_objects(value):
            return f"{name} must be a list of objects"
    if len(body.get("response_urls") or ()) > 1:
        # resetbot's forms ask for no response URL; Bolt fails reading several (a 500).
        return "response_urls must hold at most one entry"
    if "command" in body:
        problem = _command_problem(body)
        if problem:
            return problem
    kind = body.get("type")
    if kind is not None and not isinstance(kind, str):
        return "type must be text"
    if kind in ("view_submission", "view_closed"):
        return _view_problem(body.get("view"))
    if kind == "block_actions":
        return _actions_problem(body)
    if kind == "block_suggestion":
        if not isinstance(body.get("action_id"), str):
            return "action_id must be text"
        return _text_fields_problem(body, ("block_id", "value"))
    if kind == "event_callback":
        return _event_problem(body.get("event"))
    return None


def _ids_problem(body: Mapping[str, Any]) -> str | None:
    """user/team/enterprise/channel must be an id or an object with a text id, and
    authorizations a list of objects: at the top and wherever Bolt looks for ids with the same
    code (nested events, messages, items, and the first authorization, to any depth)."""
    waiting: list[tuple[str, Mapping[str, Any]]] = [("", body)]
    while waiting:
        path, holder = waiting.pop()
        for name in _ID_HOLDERS:
            value = holder.get(name)
            if value is not None and not isinstance(value, str | dict):
                return f"{path}{name} must be an id or an object"
            if isinstance(value, dict) and not isinstance(value.get("id", ""), str):
                return f"{path}{name}.id must be text"
        authorizations = holder.get("authorizations")
        if authorizations is not None:
            if not _list_of_objects(authorizations):
                return f"{path}authorizations must be a list of objects"
            if authorizations:
                waiting.append((f"{path}authorizations[0].", authorizations[0]))
        waiting.extend((f"{path}{name}.", holder[name]) for name in _NESTED_ID_SOURCES
                       if isinstance(holder.get(name), dict))
    return None


def _list_of_objects(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(item, dict) for item in value)


def _text_fields_problem(holder: Mapping[str, Any], names: tuple[str, ...]) -> str | None:
    for name in names:
        if holder.get(name) is not None and not isinstance(holder[name], str):
            return f"{name} must be text"
    return None


def _command_problem(body: Mapping[str, Any]) -> str | None:
    return _text_fields_problem(
        body, ("command", "text", "user_id", "user_name", "channel_id", "trigger_id")
    )


def _view_problem(view: object) -> str | None:
    if not isinstance(view, dict):
        return "view must be an object"
    if not isinstance(view.get("callback_id"), str):
        return "view.callback_id must be text"
    problem = _text_fields_problem(view, ("callback_id", "private_metadata", "id", "hash"))
    if problem:
        return f"view.{problem}"
    state = view.get("state")
    if state is not None and not isinstance(state, dict):
        return "view.state must be an object"
    return None


def _actions_problem(body: Mapping[str, Any]) -> str | None:
    actions = body.get("actions")
    if not actions:
        return "actions must not be empty"
    for action in actions:
        if not isinstance(action.get("action_id"), str):
            return "actions: action_id must be text"
        problem = _text_fields_problem(action, ("block_id", "value"))
        if problem:
            return f"actions: {problem}"
    return None


def _event_problem(event: object) -> str | None:
    if not isinstance(event, dict):
        return "event must be an object"
    if not isinstance(event.get("type"), str):
        return "event.type must be text"
    for name in ("user", "channel", "item"):
        value = event.get(name)
        if value is not None and not isinstance(value, str | dict):
            return f"event.{name} must be an id or an object"
    return None


# ---- ids ------------------------------------------------------------------------------------


def user_id_of(body: Mapping[str, Any]) -> str | None:
    """The acting Slack user of a command, interaction or event."""
    user = body.get("user")
    candidate = user.get("id") if isinstance(user, dict) else user
    if candidate is None:
        candidate = body.get("user_id")
    return candidate if isinstance(candidate, str) and _USER_ID.match(candidate) else None


def command_words(body: Mapping[str, Any]) -> list[str]:
    """What was typed after a slash command, word by word."""
    return str(body.get("text") or "").split()


def subcommand_of(body: Mapping[str, Any]) -> str:
    """The first word after a slash command, lower-cased ("" for the bare command)."""
    words = command_words(body)
    return words[0].lower() if words else ""


#: The subcommands of `/reset-passwords`; anything else is audited as "unknown".
KNOWN_SUBCOMMANDS = frozenset({"help", "status"})


def audited_subcommand(body: Mapping[str, Any]) -> str:
    """What the audit may keep of a command's text: "open" (bare), a known subcommand, or
    "unknown". Never the words themselves: people type passwords there by mistake."""
    subcommand = subcommand_of(body)
    if not subcommand:
        return "open"
    return subcommand if subcommand in KNOWN_SUBCOMMANDS else "unknown"


def user_name_of(body: Mapping[str, Any]) -> str:
    user = body.get("user")
    name: object = None
    if isinstance(user, dict):
        name = user.get("username") or user.get("name")
    name = name or body.get("user_name")
    return name[:NAME_LIMIT] if isinstance(name, str) else ""


def channel_id(value: object) -> str | None:
    """A Slack channel id as sent by Slack, or None for anything else."""
    return value if isinstance(value, str) and _CHANNEL_ID.match(value) else None


def channel_of(body: Mapping[str, Any]) -> str | None:
    """The channel a button was pressed in (None on App Home or a modal)."""
    channel = body.get("channel")
    if isinstance(channel, dict):
        return channel_id(channel.get("id"))
    container = body.get("container")
    if isinstance(container, dict):
        return channel_id(container.get("channel_id"))
    return None


def first_action(body: Mapping[str, Any]) -> dict[str, Any]:
    """The pressed button of a block_actions payload ({} when there is none)."""
    actions = body.get("actions")
    first = actions[0] if isinstance(actions, list) and actions else None
    return first if isinstance(first, dict) else {}


def channel_from_metadata(metadata: object) -> str | None:
    """The channel the reset modal carries in its (not secret) private_metadata."""
    if not isinstance(metadata, str) or not metadata:
        return None
    try:
        parsed = json.loads(metadata)
    except ValueError:
        return None
    return channel_id(parsed.get("channel")) if isinstance(parsed, dict) else None


def pending_id(metadata: object) -> str | None:
    return metadata if isinstance(metadata, str) and _PENDING_ID.match(metadata) else None


def task_id(value: object) -> int:
    found = numeric_id(value)
    if found is None:
        raise InputError(BUTTON_NAMES_NO_TASK, field="task")
    return found


def numeric_id(value: object) -> int | None:
    """A task or directory id typed or sent as ASCII digits, within what the database holds."""
    if not isinstance(value, str) or not _TASK_ID.match(value.strip()):
        return None
    number = int(value)
    return number if number <= MAX_ID else None


def view_id_of(view: Mapping[str, Any]) -> str | None:
    """The id of the view a submission came from (to update it after the ack)."""
    value = view.get("id")
    return value if isinstance(value, str) and _VIEW_ID.match(value) else None


# ---- the reset form ---------------------------------------------------------------------------


@dataclass(frozen=True)
class GivenFile:
    """A file given in the form's file_input: read later through files.info, never from here."""

    id: str
    name: str


@dataclass(frozen=True)
class FormInput:
    """The reset modal's values, checked for shape (not yet against the directory)."""

    scope: Scope
    selection: tuple[str, ...]
    default_password: str | None
    require_change: bool
    no_email: NoEmailChoice = NoEmailChoice.RESET
    no_email_password: str | None = field(default=None, repr=False)
    #: When to start (UTC); None: as soon as it is confirmed.
    start_at: datetime | None = None
    #: A file of users instead of picked ones (its users become the selection once read).
    file: GivenFile | None = None
    #: Leave out accounts locked on purpose; None: a form without the box (the mode decides).
    skip_locked: bool | None = None

    def request(
        self, requester: str, name: str, channel: str | None,
        selection: tuple[str, ...] | None = None,
    ) -> ResetRequest:
        return ResetRequest(
            requester=requester,
            scope=self.scope,
            selection=self.selection if selection is None else selection,
            default_password=self.default_password,
            require_change=self.require_change,
            requester_name=name,
            slack_channel=channel,
            no_email=self.no_email,
            no_email_password=self.no_email_password,
            start_at=self.start_at,
            skip_locked=self.skip_locked,
        )


def read_reset_form(view: Mapping[str, Any]) -> FormInput:
    """The modal's state, or RequestInvalid with every problem by block_id."""
    state = view.get("state")
    values = state.get("values") if isinstance(state, dict) else None
    values = values if isinstance(values, dict) else {}
    problems: dict[str, list[str]] = {}
    scope = _read_scope(_element(values, SCOPE), problems)
    selection = _read_selection(_element(values, USERS), problems)
    password = _read_password(_element(values, PASSWORD), problems)
    require_change = _read_require_change(_element(values, REQUIRE_CHANGE))
    no_email = _read_no_email(_element(values, NO_EMAIL))
    no_email_password = _read_password(_element(values, NO_EMAIL_PASSWORD), problems,
                                       NO_EMAIL_PASSWORD)
    start_at = _read_start_at(_element(values, START_AT), problems)
    given = _read_file(_element(values, USERS_FILE), problems)
    if given is not None and scope is not None and not scope.needs_selection:
        problems.setdefault(USERS_FILE, []).append(FILE_NEEDS_SELECTED_SCOPE)
    elif given is not None and selection:
        problems.setdefault(USERS_FILE, []).append(FILE_OR_PICKED)
    skip_locked = _read_skip_locked(_element(values, SKIP_LOCKED))
    if problems or scope is None:
        raise RequestInvalid(problems or {SCOPE: [CHOOSE_SCOPE]})
    return FormInput(scope, selection, password, require_change, no_email, no_email_password,
                     start_at, given, skip_locked)


def _element(values: Mapping[str, Any], block_id: str) -> Mapping[str, Any]:
    block = values.get(block_id)
    element = block.get(block_id) if isinstance(block, dict) else None
    return element if isinstance(element, dict) else {}


def _read_scope(element: Mapping[str, Any], problems: dict[str, list[str]]) -> Scope | None:
    option = element.get("selected_option")
    value = option.get("value") if isinstance(option, dict) else None
    if isinstance(value, str) and value in _SCOPES:
        return Scope(value)
    problems.setdefault(SCOPE, []).append(CHOOSE_SCOPE)
    return None


def _read_selection(element: Mapping[str, Any], problems: dict[str, list[str]]) -> tuple[str, ...]:
    options = element.get("selected_options")
    if options is None:
        return ()
    if not isinstance(options, list):
        problems.setdefault(USERS, []).append(PICKED_UNREADABLE)
        return ()
    if len(options) > MAX_SELECTION:
        problems.setdefault(USERS, []).append(too_many_picked(MAX_SELECTION))
        return ()
    ids: set[str] = set()
    unreadable = 0
    for option in options:
        value = option.get("value") if isinstance(option, dict) else None
        if is_user_id(value):
            ids.add(str(value))
        else:
            unreadable += 1
    if unreadable:
        problems.setdefault(USERS, []).append(picked_not_in_directory(unreadable))
    return tuple(sorted(ids))


def _read_file(element: Mapping[str, Any], problems: dict[str, list[str]]) -> GivenFile | None:
    """The one file of the file_input (`files`: id, name, size...); a file Slack says is over
    10 MB is refused here, on its field, before anything is fetched."""
    files = element.get("files")
    if files is None or files == []:
        return None
    first = files[0] if isinstance(files, list) and len(files) == 1 else None
    file_id = first.get("id") if isinstance(first, dict) else None
    if not isinstance(first, dict) or not isinstance(file_id, str) or not _FILE_ID.match(file_id):
        problems.setdefault(USERS_FILE, []).append(FILE_UNREADABLE_SHAPE)
        return None
    size = first.get("size")
    if isinstance(size, int) and not isinstance(size, bool) and size > MAX_FILE_BYTES:
        problems.setdefault(USERS_FILE, []).append(file_too_large(size, MAX_FILE_BYTES))
        return None
    name = first.get("name")
    return GivenFile(file_id, name[:NAME_LIMIT] if isinstance(name, str) else file_id)


def _read_password(
    element: Mapping[str, Any], problems: dict[str, list[str]], block: str = PASSWORD
) -> str | None:
    value = element.get("value")
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        problems.setdefault(block, []).append(PASSWORD_UNREADABLE)
        return None
    if len(value) > PASSWORD_MAX_LENGTH:
        problems.setdefault(block, []).append(password_too_long(PASSWORD_MAX_LENGTH))
        return None
    # NFC: checked and hashed as the sign-in side compares it (see core.passwords).
    return normalised(value)


#: Seconds since 1970 Slack's datetimepicker can send (years 1970 to 9999); anything else is
#: not a time it sent.
_LATEST_TIMESTAMP = 253_402_300_799


def _read_start_at(
    element: Mapping[str, Any], problems: dict[str, list[str]]
) -> datetime | None:
    """The datetimepicker's `selected_date_time` (seconds since 1970, UTC); None when empty."""
    value = element.get("selected_date_time")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not (
        0 <= value <= _LATEST_TIMESTAMP
    ):
        problems.setdefault(START_AT, []).append(START_AT_UNREADABLE)
        return None
    return datetime.fromtimestamp(value, UTC)


def _read_no_email(element: Mapping[str, Any]) -> NoEmailChoice:
    option = element.get("selected_option")
    value = option.get("value") if isinstance(option, dict) else None
    if isinstance(value, str) and value in _NO_EMAIL_CHOICES:
        return NoEmailChoice(value)
    # Missing (a form opened before this choice existed) or unreadable: the form's default.
    return NoEmailChoice.RESET


def _read_skip_locked(element: Mapping[str, Any]) -> bool | None:
    options = element.get("selected_options")
    if not isinstance(options, list):
        return None  # a form opened before the box existed: the mode's default
    return any(isinstance(o, dict) and o.get("value") == SKIP_LOCKED_YES for o in options)


def _read_require_change(element: Mapping[str, Any]) -> bool:
    options = element.get("selected_options")
    if not isinstance(options, list):
        # Missing or unreadable state: keep the modal's default (checked), the safer choice.
        return True
    return any(isinstance(o, dict) and o.get("value") == REQUIRE_CHANGE_YES for o in options)
