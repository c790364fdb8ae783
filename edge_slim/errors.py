"""Errors users can act on. The CLI maps each class to an exit code and one line on stderr."""
from __future__ import annotations


class EdgeSlimError(Exception):
    """Base class; `exit_code` is what the CLI exits with."""
    exit_code = 1


class BadInputError(EdgeSlimError, ValueError):
    """The caller's input cannot be used (unreadable image, empty text, ...)."""
    exit_code = 3


class ModelError(EdgeSlimError):
    """A model or artifact is missing, tampered with, or built for another target."""
    exit_code = 4


class MissingDependencyError(ModelError, ImportError):
    """An optional dependency is needed; the message names the extra to install."""
    exit_code = 4


class CompileError(EdgeSlimError):
    """A compile phase failed inside TVM or one of edge-slim's passes (not the caller's input): the message
    names the phase and where the full traceback was written."""
    exit_code = 6
