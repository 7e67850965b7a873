"""The one exception type that reaches users as a single line and exit status 2."""


class UserError(Exception):
    """Bad input from the user: a wrong path, value or file. The CLI prints `error: <message>` and exits 2."""
