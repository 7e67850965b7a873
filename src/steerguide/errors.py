"""The exceptions that reach users as a single line: bad input (exit 2) and an interrupt (exit 130)."""


class UserError(Exception):
    """Bad input from the user: a wrong path, value or file. The CLI prints `error: <message>` and exits 2."""


class Interrupted(Exception):
    """Work stopped by Ctrl-C; the message says what was kept and how to continue. The CLI exits 130."""


class SteerguideWarning(UserWarning):
    """Something the user should know (the work goes on): the CLI prints `warning: <message>` once."""


def first_line(error: BaseException) -> str:
    """The first line of an exception's message ("" for none): a library's error, quoted in one line of ours
    (a traceback-long message from torch or safetensors stays readable)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else ""
