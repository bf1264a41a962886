"""User-facing errors: the CLI prints them as one line and exits non-zero, no traceback."""


class ClipadaptError(Exception):
    """An error caused by the user's input (a file, a class, an option), with a message that names it."""


class DataError(ClipadaptError):
    """A data set, split file or image that cannot be used as given."""


class CheckpointError(ClipadaptError):
    """A weights file that is missing, unreadable or does not fit the model."""


def first_line(error: BaseException) -> str:
    """The first line of a library's error (some span pages), or its type's name when it says nothing."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
