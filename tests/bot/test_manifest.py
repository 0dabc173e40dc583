"""app-manifest.yml is pasteable as is: valid against Slack's manifest schema, and complete."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
# Slack's app manifest schema, kept in the repository: its source is in tests/data/README.md.
SCHEMA = REPO / "tests" / "data" / "slack-app-manifest.schema.json"


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    loaded = yaml.safe_load((REPO / "app-manifest.yml").read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def test_the_manifest_validates_against_the_slack_schema(manifest: dict[str, Any]) -> None:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    jsonschema.Draft7Validator.check_schema(schema)
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(manifest), key=str)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def test_the_schema_would_catch_a_mistake(manifest: dict[str, Any]) -> None:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    broken = dict(manifest, features=dict(manifest["features"], slash_commands=[
        {"command": "reset-passwords", "description": "no leading slash"}
    ]))
    assert list(jsonschema.Draft7Validator(schema).iter_errors(broken))


def test_the_command_has_a_usage_hint(manifest: dict[str, Any]) -> None:
    commands = {c["command"]: c for c in manifest["features"]["slash_commands"]}
    assert set(commands) == {"/reset-passwords"}
    assert "status" in commands["/reset-passwords"]["usage_hint"]
    assert commands["/reset-passwords"]["url"].endswith("/slack/events")


def test_interactivity_has_the_options_load_url(manifest: dict[str, Any]) -> None:
    interactivity = manifest["settings"]["interactivity"]
    assert interactivity["is_enabled"] is True
    assert interactivity["request_url"].endswith("/slack/events")
    assert interactivity["message_menu_options_url"].endswith("/slack/events")


def test_app_home_and_its_event_are_on(manifest: dict[str, Any]) -> None:
    assert manifest["features"]["app_home"]["home_tab_enabled"] is True
    assert manifest["settings"]["event_subscriptions"]["bot_events"] == ["app_home_opened"]
    assert manifest["settings"]["socket_mode_enabled"] is True
    assert manifest["features"]["bot_user"]["display_name"] == "resetbot"


def test_bot_scopes_are_the_minimal_set(manifest: dict[str, Any]) -> None:
    assert set(manifest["oauth_config"]["scopes"]["bot"]) == {
        "commands", "chat:write", "im:write", "files:write", "files:read", "usergroups:read",
        "groups:read",
    }
    assert "user" not in manifest["oauth_config"]["scopes"]
