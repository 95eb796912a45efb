"""Exceptions whose messages name the file, tensor or field at fault and what was expected."""


class LlamaTwinError(ValueError):
    """Base class of llama-twin's input errors (a ValueError, so callers can catch either)."""


class ConfigError(LlamaTwinError):
    """A config.json field of the wrong type or value."""


class CheckpointError(LlamaTwinError):
    """A missing, truncated or inconsistent checkpoint file or tensor."""


class GenerationError(LlamaTwinError):
    """Generation arguments that cannot be honoured (bad sampling values, prompt too long)."""


class ConversionError(LlamaTwinError):
    """A conversion that cannot be done or finished: a destination that is taken, a model a format
    cannot express, a write that failed (full disk, read-only folder)."""


class TokenizerError(LlamaTwinError):
    """A tokenizer file of the wrong kind, a corrupt file, or a tokenizer setting that cannot work."""


class InputError(LlamaTwinError):
    """Model or evaluation inputs of the wrong shape, dtype or value (segment ids, strides, lengths)."""
