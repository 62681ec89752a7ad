"""Errors caused by the user's input: a config, a data directory, a checkpoint, the environment.

The CLI reports these as one line naming the file, row or config key (exit status 2; the
traceback only with ``--debug``). Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations


class UserInputError(Exception):
    """Base class: the input (not the code) is wrong; the message says what to change."""


class CheckpointError(UserInputError):
    """A checkpoint that is missing, unreadable, not a checkpoint, or not trusted."""


class DataMismatchError(UserInputError):
    """A checkpoint trained on other data (item map, num_items, num_users) than the configured one."""


class ModelConfigMismatchError(UserInputError):
    """The config's ``model`` section differs from the model a checkpoint holds."""


class RunConfigChangedError(UserInputError):
    """A run directory's saved ``config.yaml`` differs from the config of this launch."""


class RunKeyError(UserInputError):
    """The per-user key that marks run directories (``$ELASTIC_PL_RUN_KEY``) cannot be read or made."""
