"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class ErasekitError(Exception):
    """Bad input or a missing resource, explained in the message; never a bug."""


class ErasekitWarning(UserWarning):
    """Input that works but is probably not what was meant; the CLI prints it as one 'warning:' line."""
