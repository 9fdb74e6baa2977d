"""One exception type for every mistake a user can fix.

Entry points catch `FgsslError` and print its message as a single line, so a
user sees what is wrong and how to fix it instead of a TensorFlow stack trace.
"""


class FgsslError(Exception):
    """A user-facing error: the message names the problem and the fix."""


class Interrupted(FgsslError):
    """The run was asked to stop (SIGTERM, SIGINT) and saved a checkpoint to resume from."""
