"""The one base of the errors meant for users: their message says what went wrong and what to
do, so a command prints it as one line and exits 2 (simclr_embed/cli.py). Any other exception
is a bug and keeps its traceback."""


class UserError(Exception):
    """Mixed into each stage's own errors (DataError, BundleError, ...), which keep their other
    bases (RuntimeError, ServiceError) for the code that catches those."""


class ConfigError(UserError, ValueError):
    """A flag, setting or config value that cannot work (an unknown choice, a batch that does
    not divide): a ValueError too, so that pydantic validators turn it into their own error."""
