"""Every id Slack sends back to the app: view callback ids, block and action ids.

They are an interface (Slack echoes them in payloads, listeners are routed by them, tests and
docs name them), so they are written once, here, and kept.
"""

from __future__ import annotations

# ---- views ------------------------------------------------------------------------------------

CALLBACK_RESET = "bulk_reset"
CALLBACK_CONFIRM = "bulk_reset_confirm"
CALLBACK_NOTICE = "resetbot_notice"

# ---- the reset modal's inputs: block_id and action_id are the same -------------------------------

SCOPE = "scope"
USERS = "users"
PASSWORD = "password"  # noqa: S105 - a block id, not a password
REQUIRE_CHANGE = "require_change"
#: The value of the (only) "require a new password" checkbox.
REQUIRE_CHANGE_YES = "yes"
#: E-mailed mode: what happens to users without an address (radio: reset, skip, set).
NO_EMAIL = "no_email"
#: The password staff type for users without an address (choice `set`).
NO_EMAIL_PASSWORD = "no_email_password"  # noqa: S105 - a block id, not a password
#: A file of users (file_input: CSV or text), instead of picking them.
USERS_FILE = "users_file"
#: Leave out accounts locked on purpose (a checkbox, checked to begin with).
SKIP_LOCKED = "skip_locked"
SKIP_LOCKED_YES = "yes"
#: When the reset starts (a datetimepicker; empty: now).
START_AT = "start_at"

# ---- buttons ----------------------------------------------------------------------------------

#: App Home's "New reset".
ACTION_OPEN_MODAL = "open_reset_modal"
#: App Home's link to a task's thread; the task id follows as `_<id>`.
ACTION_OPEN_THREAD = "open_thread"
#: On a running task's parent message.
ACTION_CANCEL = "cancel_task"
#: On an ended task's parent message, when mails failed.
ACTION_RETRY_FAILED = "retry_failed"
#: On a task's parent message while it awaits a second admin's approval; value = task id.
ACTION_APPROVE = "approve_task"
ACTION_REJECT = "reject_task"
#: "Send me the list": the CSV of everyone a reset would reset, to the clicker by DM. On the
#: preview modal (value "preview": the request is the view's), and on a request awaiting
#: approval (value = task id).
ACTION_SEND_LIST = "send_list"
SEND_LIST_OF_PREVIEW = "preview"
#: On a scheduled task held at its start because its counts changed: start it anyway.
ACTION_CONFIRM_SCHEDULED = "confirm_scheduled"
