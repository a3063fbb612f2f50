"""Error types. Every error a user can cause is a LlamaforgeError subclass.

The CLI prints ``str(error)`` (no traceback unless ``--debug``) and exits with
``error.exit_code``: 2 for user errors. Messages say what went wrong, where
(file:line, record, key) and how to fix it.
"""


class LlamaforgeError(Exception):
    """Base class for errors caused by user input (config, data, model paths)."""

    exit_code = 2


class ConfigError(LlamaforgeError):
    """Invalid or unknown configuration keys or values."""


class DataError(LlamaforgeError):
    """A dataset file or record that cannot be read or used."""


class ModelError(LlamaforgeError):
    """A model or adapter that cannot be found or loaded."""


class ExportError(LlamaforgeError):
    """A merge or export that cannot be done or failed verification."""


class TrainingInterrupted(LlamaforgeError):
    """Ctrl-C or SIGTERM stopped training after a resumable checkpoint was written."""

    exit_code = 130
