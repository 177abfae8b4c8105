"""Exception types the CLI turns into a single clear line and a non-zero exit.

This module is torch-free (the device runtime imports it): keep it that way.
"""


class MonoconError(Exception):
    """A problem with the user's input or files (not a bug): shown as one line, never a traceback."""


class ArtifactError(MonoconError):
    """An artifact directory that is missing, of another format version, or whose files fail their checksum."""


class RuntimeInputError(MonoconError, ValueError):
    """Inputs given to the device runtime that the model cannot take (wrong rank, size, dtype, NaN, empty)."""


class GateError(MonoconError):
    """An export whose measured figures miss a gate (parity, finiteness, int8 accuracy): nothing is written."""
