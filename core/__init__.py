"""The shared domain of resetbot: settings, database, models, directory, scopes, passwords."""
