"""The one exception type the CLI turns into a single clear line and a non-zero exit."""


class MonoconError(Exception):
    """A problem with the user's input or files (not a bug): shown as one line, never a traceback."""
