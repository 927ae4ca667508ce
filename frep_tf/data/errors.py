"""The one exception type for user-facing data problems."""


class DatasetError(ValueError):
    """A dataset cannot be loaded as asked.

    The message is one line that names the flag or path at fault, what is wrong and what is
    allowed, so `main.py` can print it as is and stop.
    """
