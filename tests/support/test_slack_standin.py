"""The Slack Web API stand-in answers slack_sdk's WebClient over real HTTP, as Slack would."""

from __future__ import annotations

import threading
import time

import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import (
    RateLimitErrorRetryHandler,
    ServerErrorRetryHandler,
)

from tests.support.slack_standin import TEST_BOT_TOKEN, UPLOAD, SlackStandIn


def client_for(standin: SlackStandIn, token: str = TEST_BOT_TOKEN, **kwargs: object) -> WebClient:
    return WebClient(token=token, base_url=standin.api_url, timeout=5, **kwargs)  # type: ignore[arg-type]


def section(text: str) -> dict[str, object]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def test_records_method_params_and_headers(slack_standin: SlackStandIn) -> None:
    client = client_for(slack_standin)
    assert client.auth_test()["user_id"] == slack_standin.bot_user_id
    client.chat_postMessage(channel="C1", text="hello", blocks=[section("*hi*")])

    assert slack_standin.count_by_method() == {"auth.test": 1, "chat.postMessage": 1}
    post = slack_standin.calls("chat.postMessage")[0]
    assert post.params["channel"] == "C1"
    assert post.params["blocks"][0]["text"]["text"] == "*hi*"
    assert post.headers["authorization"] == f"Bearer {TEST_BOT_TOKEN}"
    assert post.ok


def test_form_bodies_are_parsed_too(slack_standin: SlackStandIn) -> None:
    slack_standin.set_usergroup("S0ADMINS", ["U1", "U2"])
    client = client_for(slack_standin)
    assert client.usergroups_users_list(usergroup="S0ADMINS")["users"] == ["U1", "U2"]
    call = slack_standin.calls("usergroups.users.list")[0]
    assert call.params["usergroup"] == "S0ADMINS"
    with pytest.raises(SlackApiError) as failure:
        client.usergroups_users_list(usergroup="S0NOPE")
    assert failure.value.response["error"] == "no_such_subteam"


@pytest.mark.parametrize(("token", "error"), [("xoxb-wrong", "invalid_auth"), ("", "not_authed")])
def test_wrong_or_missing_token_is_refused(
    slack_standin: SlackStandIn, token: str, error: str
) -> None:
    client = WebClient(token=token or None, base_url=slack_standin.api_url, timeout=5)
    with pytest.raises(SlackApiError) as failure:
        client.chat_postMessage(channel="C1", text="hello")
    assert failure.value.response["error"] == error
    assert slack_standin.messages("C1") == []
    assert slack_standin.calls("chat.postMessage")[0].error == error


def test_rate_limit_answers_429_with_retry_after(slack_standin: SlackStandIn) -> None:
    slack_standin.rate_limit_next("chat.postMessage", retry_after=7)
    client = client_for(slack_standin)
    with pytest.raises(SlackApiError) as failure:
        client.chat_postMessage(channel="C1", text="hello")
    assert failure.value.response.status_code == 429
    assert failure.value.response.headers["Retry-After"] == "7"
    assert slack_standin.messages("C1") == []
    # The fault was used up: the next call goes through.
    client.chat_postMessage(channel="C1", text="hello")
    assert [m.text for m in slack_standin.messages("C1")] == ["hello"]


def test_rate_limit_retry_handler_honours_retry_after(slack_standin: SlackStandIn) -> None:
    slack_standin.rate_limit_next("chat.postMessage", retry_after=1)
    slack_standin.rate_limit_next("chat.postMessage", retry_after=0)
    handler = RateLimitErrorRetryHandler(max_retry_count=3)
    client = client_for(slack_standin, retry_handlers=[handler])
    started = time.monotonic()
    response = client.chat_postMessage(channel="C1", text="eventually")
    assert response["ok"]
    assert time.monotonic() - started >= 1.0
    statuses = [c.status for c in slack_standin.calls("chat.postMessage")]
    assert statuses == [429, 429, 200]
    assert len(slack_standin.messages("C1")) == 1


@pytest.mark.parametrize("status", [500, 503])
def test_server_errors_and_their_retry_handler(slack_standin: SlackStandIn, status: int) -> None:
    slack_standin.server_error_next("chat.update", times=1, status=status)
    slack_standin.server_error_next("*", times=1, status=status)
    plain = client_for(slack_standin)
    with pytest.raises(SlackApiError) as failure:
        plain.chat_postMessage(channel="C1", text="first")
    assert failure.value.response.status_code == status
    handler = ServerErrorRetryHandler(max_retry_count=2)
    retrying = client_for(slack_standin, retry_handlers=[handler])
    posted = retrying.chat_postMessage(channel="C1", text="second")
    retrying.chat_update(channel="C1", ts=posted["ts"], text="second, edited")
    assert [c.status for c in slack_standin.calls("chat.update")] == [status, 200]
    assert slack_standin.message("C1", posted["ts"]).text == "second, edited"


def test_fail_next_and_channel_membership(slack_standin: SlackStandIn) -> None:
    client = client_for(slack_standin)
    slack_standin.fail_next("chat.postMessage", "channel_not_found")
    with pytest.raises(SlackApiError) as failure:
        client.chat_postMessage(channel="C1", text="x")
    assert failure.value.response["error"] == "channel_not_found"

    slack_standin.add_channel("CPRIVATE", member=False)
    slack_standin.add_channel("COLD", archived=True)
    for channel, error in (("CPRIVATE", "not_in_channel"), ("COLD", "is_archived"),
                           ("DHUMANS", "channel_not_found")):
        with pytest.raises(SlackApiError) as failure:
            client.chat_postMessage(channel=channel, text="x")
        assert failure.value.response["error"] == error
    slack_standin.set_member("CPRIVATE", True)
    assert client.chat_postMessage(channel="CPRIVATE", text="now I'm in")["ok"]


def test_dm_through_conversations_open(slack_standin: SlackStandIn) -> None:
    client = client_for(slack_standin)
    channel = client.conversations_open(users="U123")["channel"]["id"]
    assert channel == slack_standin.dm_channel("U123")
    client.chat_postMessage(channel=channel, text="just for you")
    assert [m.text for m in slack_standin.messages(channel)] == ["just for you"]


def test_messages_threads_and_updates(slack_standin: SlackStandIn) -> None:
    client = client_for(slack_standin)
    parent = client.chat_postMessage(channel="C1", text="parent")["ts"]
    reply = client.chat_postMessage(channel="C1", text="reply", thread_ts=parent)["ts"]
    client.chat_update(channel="C1", ts=parent, text="parent v2", blocks=[section("v2")])
    assert reply > parent
    assert [m.text for m in slack_standin.top_level("C1")] == ["parent v2"]
    assert slack_standin.message("C1", parent).updates == 1
    assert [m.text for m in slack_standin.thread("C1", parent)] == ["reply"]
    for bad_ts, method in (("1.000000", "chat.update"), ("2.000000", "chat.postMessage")):
        with pytest.raises(SlackApiError) as failure:
            if method == "chat.update":
                client.chat_update(channel="C1", ts=bad_ts, text="x")
            else:
                client.chat_postMessage(channel="C1", text="x", thread_ts=bad_ts)
        assert failure.value.response["error"] in ("message_not_found", "invalid_thread_ts")


@pytest.mark.parametrize(
    ("blocks", "complaint"),
    [
        ([section("x")] * 51, "/blocks"),
        ([section("x" * 3001)], "/blocks/0/text/text"),
        ([{"type": "header", "text": {"type": "plain_text", "text": "h" * 151}}], "/blocks/0"),
        ([{"type": "header", "text": {"type": "mrkdwn", "text": "h"}}], "/blocks/0/text/type"),
        ([{"type": "section"}], "/blocks/0"),
        ([dict(section("a"), block_id="b"), dict(section("b"), block_id="b")], "block_id"),
        ([dict(section("a"), block_id="b" * 256)], "block_id"),
        ([{"type": "actions", "elements": [
            {"type": "button", "text": {"type": "plain_text", "text": "t" * 76}, "action_id": "a"}
        ]}], "/blocks/0/elements/0/text"),
        ([{"type": "actions", "elements": [
            {"type": "button", "text": {"type": "plain_text", "text": "a"}, "action_id": "x"},
            {"type": "button", "text": {"type": "plain_text", "text": "b"}, "action_id": "x"},
        ]}], "action_id"),
        ([{"type": "fancy"}], "/blocks/0/type"),
    ],
)
def test_block_kit_limits_in_messages(
    slack_standin: SlackStandIn, blocks: list[dict[str, object]], complaint: str
) -> None:
    with pytest.raises(SlackApiError) as failure:
        client_for(slack_standin).chat_postMessage(channel="C1", text="t", blocks=blocks)
    assert failure.value.response["error"] == "invalid_blocks"
    messages = failure.value.response["response_metadata"]["messages"]
    assert any(complaint in m for m in messages), messages
    assert slack_standin.messages("C1") == []


@pytest.mark.filterwarnings("ignore:The top-level `text` argument is missing")
def test_message_text_limit_and_no_text(slack_standin: SlackStandIn) -> None:
    client = client_for(slack_standin)
    for kwargs, error in (({"text": "x" * 40_001}, "msg_too_long"), ({"text": ""}, "no_text")):
        with pytest.raises(SlackApiError) as failure:
            client.chat_postMessage(channel="C1", **kwargs)  # type: ignore[arg-type]
        assert failure.value.response["error"] == error


def modal(**overrides: object) -> dict[str, object]:
    view: dict[str, object] = {
        "type": "modal",
        "callback_id": "bulk_reset",
        "title": {"type": "plain_text", "text": "Reset passwords"},
        "submit": {"type": "plain_text", "text": "Preview"},
        "blocks": [{
            "type": "input", "block_id": "users", "label": {"type": "plain_text", "text": "Users"},
            "element": {"type": "multi_external_select", "action_id": "users",
                        "placeholder": {"type": "plain_text", "text": "Search"}},
        }],
    }
    view.update(overrides)
    return view


def test_views_open_update_publish(slack_standin: SlackStandIn) -> None:
    client = client_for(slack_standin)
    opened = client.views_open(trigger_id="123.456", view=modal())["view"]
    assert opened["callback_id"] == "bulk_reset"
    updated = client.views_update(view_id=opened["id"], hash=opened["hash"],
                                  view=modal(callback_id="bulk_reset_confirm"))["view"]
    assert slack_standin.views()[0]["callback_id"] == "bulk_reset_confirm"
    with pytest.raises(SlackApiError) as failure:
        client.views_update(view_id=opened["id"], hash=opened["hash"], view=modal())
    assert failure.value.response["error"] == "hash_conflict"
    assert updated["hash"] != opened["hash"]
    client.views_publish(user_id="U1", view={"type": "home", "blocks": [section("home")]})
    home = slack_standin.home_view("U1")
    assert home is not None and home["blocks"][0]["text"]["text"] == "home"


@pytest.mark.parametrize(
    ("overrides", "complaint"),
    [
        ({"title": {"type": "plain_text", "text": "t" * 25}}, "/view/title/text"),
        ({"submit": {"type": "plain_text", "text": "s" * 25}}, "/view/submit/text"),
        ({"submit": None}, "/view/submit"),
        ({"callback_id": "c" * 256}, "/view/callback_id"),
        ({"private_metadata": "p" * 3001}, "/view/private_metadata"),
        ({"blocks": [section("x")] * 101}, "/view/blocks"),
        ({"blocks": [{
            "type": "input", "label": {"type": "plain_text", "text": "L"},
            "element": {"type": "static_select", "action_id": "a", "options": [
                {"text": {"type": "plain_text", "text": "o" * 76}, "value": "v"}]},
        }]}, "/view/blocks/0/element/options/0/text/text"),
        ({"blocks": [{
            "type": "input", "label": {"type": "plain_text", "text": "L"},
            "element": {"type": "static_select", "action_id": "a", "options": [
                {"text": {"type": "plain_text", "text": "o"}, "value": str(i)}
                for i in range(101)]},
        }]}, "/view/blocks/0/element/options"),
        ({"blocks": [{
            "type": "input", "label": {"type": "plain_text", "text": "L"},
            "element": {"type": "plain_text_input", "action_id": "a",
                        "placeholder": {"type": "plain_text", "text": "p" * 151}},
        }]}, "/view/blocks/0/element/placeholder/text"),
    ],
)
def test_modal_limits(
    slack_standin: SlackStandIn, overrides: dict[str, object], complaint: str
) -> None:
    view = {k: v for k, v in modal(**overrides).items() if v is not None}
    with pytest.raises(SlackApiError) as failure:
        client_for(slack_standin).views_open(trigger_id="1.2", view=view)
    assert failure.value.response["error"] == "invalid_arguments"
    messages = failure.value.response["response_metadata"]["messages"]
    assert any(complaint in m for m in messages), messages
    assert slack_standin.views() == []


def test_files_upload_v2_lands_in_the_thread(slack_standin: SlackStandIn) -> None:
    client = client_for(slack_standin)
    parent = client.chat_postMessage(channel="C1", text="task")["ts"]
    content = "username,outcome\r\ndave,no_email\r\n"
    client.files_upload_v2(channel="C1", thread_ts=parent, filename="follow-up.csv",
                           content=content, title="Follow-up")
    assert slack_standin.count_by_method() == {
        "chat.postMessage": 1, "files.getUploadURLExternal": 1, UPLOAD: 1,
        "files.completeUploadExternal": 1,
    }
    [uploaded] = slack_standin.files("C1")
    assert uploaded.text == content
    assert (uploaded.thread_ts, uploaded.title, uploaded.filename) == (
        parent, "Follow-up", "follow-up.csv")
    assert slack_standin.message("C1", parent).files == [uploaded.id]


def test_upload_into_a_channel_the_bot_left_is_refused(slack_standin: SlackStandIn) -> None:
    slack_standin.add_channel("CGONE", member=False)
    with pytest.raises(SlackApiError) as failure:
        client_for(slack_standin).files_upload_v2(channel="CGONE", filename="a.csv", content="a")
    assert failure.value.response["error"] == "not_in_channel"


def test_requests_containing_finds_a_secret_in_any_encoding(slack_standin: SlackStandIn) -> None:
    client = client_for(slack_standin)
    secret = "Sécret&Pass+1 <x>"
    client.chat_postMessage(channel="C1", text=f"oops {secret}")
    slack_standin.set_usergroup("S1", [])
    client.usergroups_users_list(usergroup="S1", team_id=secret)
    found = {c.method for c in slack_standin.requests_containing(secret)}
    assert found == {"chat.postMessage", "usergroups.users.list"}
    assert slack_standin.requests_containing("never-sent") == []


def test_wait_for_wakes_on_a_call_from_another_thread(slack_standin: SlackStandIn) -> None:
    client = client_for(slack_standin)
    go = threading.Event()

    def post_later() -> None:
        go.wait(5)
        client.chat_postMessage(channel="C1", text="from a worker")

    thread = threading.Thread(target=post_later)
    thread.start()
    started = time.monotonic()
    go.set()
    call = slack_standin.wait_for_call("chat.postMessage", timeout=5)
    thread.join()
    assert call.params["text"] == "from a worker"
    assert time.monotonic() - started < 5
    assert not slack_standin.wait_for(lambda: slack_standin.count("chat.update") > 0, timeout=0.05)


def test_it_knows_which_channels_everyone_can_read(slack_standin: SlackStandIn) -> None:
    slack_standin.add_channel("C1")
    slack_standin.add_channel("G1", private=True)
    client = client_for(slack_standin)
    dm = client.conversations_open(users="U1")["channel"]["id"]

    assert client.conversations_info(channel="C1")["channel"]["is_private"] is False
    assert client.conversations_info(channel="G1")["channel"]["is_private"] is True
    assert client.conversations_info(channel=dm)["channel"]["is_im"] is True
    with pytest.raises(SlackApiError) as unknown:
        client.conversations_info(channel="C0NOPE")
    assert unknown.value.response["error"] == "channel_not_found"
    for channel in ("C1", "G1", dm):
        client.files_upload_v2(channel=channel, filename="a.csv", content="x")
    assert [f.channel for f in slack_standin.files_in_public_channels()] == ["C1"]


def test_users_who_left_or_were_deactivated_and_a_missing_scope_answer_as_slack_does(
    slack_standin: SlackStandIn,
) -> None:
    client = client_for(slack_standin)
    slack_standin.remove_user("UGONE")
    slack_standin.deactivate_user("UOFF")
    answers = []
    for user in ("UGONE", "UOFF"):
        with pytest.raises(SlackApiError) as refused:
            client.conversations_open(users=user)
        answers.append(refused.value.response["error"])
    assert answers == ["user_not_found", "user_disabled"]
    assert client.conversations_open(users="UHERE")["channel"]["id"] == "DHERE"

    slack_standin.revoke_scope("im:write")
    with pytest.raises(SlackApiError) as refused:
        client.conversations_open(users="UHERE")
    body = refused.value.response.data
    assert (body["error"], body["needed"]) == ("missing_scope", "im:write")
    assert "im:write" not in body["provided"] and "chat:write" in body["provided"]


def test_files_info_describes_a_shared_file_served_only_with_the_bot_token(
    slack_standin: SlackStandIn,
) -> None:
    import urllib.request

    file_id = slack_standin.share_file(b"alice\nbob\n", "class.txt", filetype="text")
    info = WebClient(token=slack_standin.token, base_url=slack_standin.api_url).files_info(
        file=file_id)["file"]
    assert (info["id"], info["name"], info["size"], info["filetype"]) == (
        file_id, "class.txt", 10, "text")
    url = info["url_private_download"]
    assert url.startswith(slack_standin.base_url)
    with urllib.request.urlopen(urllib.request.Request(
            url, headers={"Authorization": f"Bearer {slack_standin.token}"})) as response:
        assert response.read() == b"alice\nbob\n"
    for headers in ({}, {"Authorization": "Bearer xoxb-someone-else"}):
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers)) as response:
            assert b"alice" not in response.read()
    assert [call.ok for call in slack_standin.downloads()] == [True, False, False]
    with pytest.raises(SlackApiError, match="file_not_found"):
        WebClient(token=slack_standin.token, base_url=slack_standin.api_url).files_info(
            file="F0NOSUCH")
