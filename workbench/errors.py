"""The workbench's own error types: bad input that the user can fix, reported in one line.

The command line prints these as ``error: <message>`` with exit status 2 (``-v`` adds the
traceback); any other exception is a bug and keeps its traceback. Each type also derives from the
built-in exception that callers would expect (``ValueError``, ``FileNotFoundError`` ...), so
``except ValueError`` around a config call keeps working.
"""
from __future__ import annotations


class WorkbenchError(Exception):
    """Base class: input the user can correct (a config value, a path, a run folder)."""


class ConfigError(WorkbenchError, ValueError):
    """A configuration field, preset or parameter has an unknown name or a bad value."""


class RunFolderError(WorkbenchError, FileExistsError):
    """A run folder holds another run: a checkpoint without ``--resume``, or another configuration."""


class MissingFileError(WorkbenchError, FileNotFoundError):
    """A file the input names (a notebook, a grid, a checkpoint) does not exist."""


class CheckpointError(MissingFileError):
    """A checkpoint file is missing, unreadable, or holds non-finite weights."""


class RunInUseError(RunFolderError):
    """Another process holds the run folder's lock (two writers never share a run folder)."""


class DiskFullError(WorkbenchError, OSError):
    """A write found no room (a full disk, a quota): the message names the file, the run folder and how
    to go on once there is space; what was written before stays good."""
