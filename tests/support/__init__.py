"""Real stand-ins the tests run against: SMTP server, Slack Web API, signed requests."""
