"""Run folders and the files in them.

:class:`RunFolder` owns a run's file names, state (new / running / interrupted / failed / finished),
lock and :class:`RunRecord`; :mod:`workbench.runs.files` holds the atomic writes and checkpoints
under it, :class:`FolderLock` the one-writer lock (of run and sweep folders).
"""
from workbench.runs.files import (
    DISK_FULL,
    atomic_write_bytes,
    atomic_write_text,
    load_checkpoint,
    new_run_dir,
    nonfinite_tensors,
    read_rows,
    rng_state,
    save_checkpoint,
    set_rng_state,
    write_csv,
    write_json,
)
from workbench.runs.folder import (
    STATES,
    PointFolder,
    RunFolder,
    RunRecord,
    epoch_summary,
    run_state,
)
from workbench.runs.lock import FolderLock

__all__ = [
    "DISK_FULL", "STATES", "FolderLock", "PointFolder", "RunFolder", "RunRecord", "atomic_write_bytes",
    "atomic_write_text", "epoch_summary",
    "load_checkpoint", "new_run_dir", "nonfinite_tensors", "read_rows", "rng_state", "run_state",
    "save_checkpoint", "set_rng_state", "write_csv", "write_json",
]
