"""What a run prints: boostray's own lines, its warnings and errors, and Ray's warnings and errors.

Ray Train logs routine INFO records in every worker (one "Reporting training result ..." per round and
rank) and in its controller, and Ray forwards a worker's console to the driver's. Those records are
kept off the console here, where they are made, and written to a log file instead; ``--verbose``
leaves them on the console.
"""

from __future__ import annotations

import importlib.util
import logging
import os

RAY_PACKAGE = os.path.dirname(os.path.abspath(importlib.util.find_spec("ray").origin)) + os.sep


def is_routine_ray_record(record: logging.LogRecord) -> bool:
    """An INFO (or DEBUG) record logged by Ray's own code. Ray names some loggers after their file, not
    under ``ray.``: the record's source path tells them apart from the user's and boostray's."""
    return record.levelno < logging.WARNING and os.path.abspath(record.pathname).startswith(RAY_PACKAGE)


class _NotRoutineRay(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not is_routine_ray_record(record)


class _OnlyRoutineRay(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return is_routine_ray_record(record)


def _console_handlers() -> list[logging.Handler]:
    """The handlers that print (stream handlers other than files) on the loggers Ray Train configures."""
    found = []
    for logger in (logging.getLogger(), logging.getLogger("ray"), logging.getLogger("ray.train")):
        found += [h for h in logger.handlers
                  if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
    return found


def train_log_level(verbose: bool) -> str:
    """Ray Train's log level for its controller and the workers' set-up (RunConfig's logging_config):
    its INFO records print from processes boostray's code does not run in."""
    return "INFO" if verbose else "WARNING"


def quiet_driver_console(verbose: bool) -> None:
    """In the command's own process, before Ray starts: Ray's routine records (its "Started a local Ray
    instance") leave the console that Ray's ``ray`` logger prints to, unless ``verbose``. Only Ray's
    handlers are touched; the root logger stays the application's."""
    if verbose:
        return
    import ray  # noqa: F401 - Ray puts its console handler on the "ray" logger when it is imported

    for handler in logging.getLogger("ray").handlers:
        if isinstance(handler, logging.StreamHandler) and not any(isinstance(f, _NotRoutineRay) for f in handler.filters):
            handler.addFilter(_NotRoutineRay())


def route_ray_records(log_file: str | None, *, verbose: bool = False) -> None:
    """In this process (a Train worker): Ray's routine records leave the console unless ``verbose``, and
    go to ``log_file`` (appended to; None: only to Ray's own session logs). Call it once Ray Train has
    configured the worker's logging, i.e. inside the train loop. Idempotent."""
    if not verbose:
        for handler in _console_handlers():
            if not any(isinstance(f, _NotRoutineRay) for f in handler.filters):
                handler.addFilter(_NotRoutineRay())
    if log_file is None:
        return
    path = os.path.abspath(log_file)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    for logger in (logging.getLogger(), logging.getLogger("ray.train")):  # the latter does not propagate
        if not any(getattr(h, "baseFilename", None) == path for h in logger.handlers):
            handler = logging.FileHandler(path)
            handler.setLevel(logging.INFO)  # Ray Train's own loggers pass DEBUG on
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            handler.addFilter(_OnlyRoutineRay())
            logger.addHandler(handler)
