"""Errors meant for the user: printed as one clear message, never as a traceback wall."""


class UserError(Exception):
    """A problem with the user's input (config, files, folders) that they can fix.

    The message names the file or the setting and says what to do.
    """


class ConfigError(UserError):
    """A setting is unknown, of the wrong type or out of range."""
