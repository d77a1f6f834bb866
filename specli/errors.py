"""The one error family users see. The CLI turns each into one line on stderr and an exit code."""


class SpecliError(Exception):
    """An error caused by input or environment, not by a bug. Shown as one line, exit 1."""

    exit_code = 1


class UsageError(SpecliError):
    """Bad option values or arguments. Exit 2, like Typer's own usage errors."""

    exit_code = 2


class ModelError(SpecliError):
    """A model file is missing, unreadable, not a GGUF, or fails to load."""


class CompatibilityError(SpecliError):
    """The draft and target cannot be paired (different vocabularies)."""


class DownloadError(SpecliError):
    """A file could not be fetched or verified from the Hugging Face Hub."""


class RegistryError(SpecliError):
    """models.toml (built-in or user) is malformed or names something unknown."""


class ContextFullError(SpecliError):
    """The prompt does not fit the context window."""
