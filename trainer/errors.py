"""The one exception type that reaches the user as a plain message."""


class UserError(Exception):
    """Bad input or settings: the message says what, where, and what to do.

    Entry points print it without a traceback and exit with status 2. Raise it
    before anything is written to the output directory, so an earlier run's
    results are never damaged by a run that could not start.
    """
