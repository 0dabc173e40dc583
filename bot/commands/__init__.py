"""The `resetbot` subcommands, one module per command group.

Each module holds a group's parser (`add_parser`) beside the functions it dispatches to; those
read the settings once and hand them to the flow (`bot/reset_flow.py`, `bot/tasks_cli.py`,
`bot/directory_cli.py`, `bot/mail_preview.py`, `bot/demo.py`, `bot/server.py`, `jobs/worker.py`).
`bot/cli.py` puts the groups together under one parser and turns errors into exit codes;
`parsing.py` is how every parser looks, `context.py` what every command shares.
"""
