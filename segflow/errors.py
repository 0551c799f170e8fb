"""Errors that mean "the user must change something": caught by the entry points and
printed as one sentence naming the file or key and the fix (no stack trace)."""


class SegflowError(Exception):
    """Base class of user-facing errors."""


class DataError(SegflowError, ValueError):
    """Bad or missing data: names the file/folder and the fix."""


class ConfigError(SegflowError, ValueError):
    """A config value that cannot work: names the key and the fix."""


class NetworkMismatchError(SegflowError, TypeError):
    """A method was given a network of the wrong shape (``SegNet`` vs ``Denoiser``)."""


class OutOfMemoryAdvice(SegflowError, RuntimeError):
    """CUDA ran out of memory: names the config keys that reduce memory and their values."""
