"""Which records a Train worker's console shows, and which go to the run's ray.log (console.py)."""

import io
import logging
import os

import pytest

from boostray.distributed.console import RAY_PACKAGE, route_ray_records


def record(pathname: str, level: int, name: str = "x") -> logging.LogRecord:
    return logging.LogRecord(name, level, pathname, 1, f"{name}:{logging.getLevelName(level)}", None, None)


@pytest.fixture
def console():
    """A console handler on the root logger, as Ray Train gives a worker; removed afterwards."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    root.addHandler(handler)
    before = list(root.handlers)
    yield handler, stream
    for h in list(root.handlers) + list(logging.getLogger("ray.train").handlers):
        if h is handler or h not in before:
            h.close()
            root.removeHandler(h)
            logging.getLogger("ray.train").removeHandler(h)


@pytest.mark.parametrize("verbose", [False, True])
def test_ray_info_leaves_the_console_for_the_log_file_and_warnings_stay(console, tmp_path, verbose):
    handler, stream = console
    log_file = tmp_path / "run" / "ray.log"
    route_ray_records(str(log_file), verbose=verbose)
    route_ray_records(str(log_file), verbose=verbose)  # idempotent: one filter, one file handler
    ray_file = os.path.join(RAY_PACKAGE, "train", "v2", "context.py")
    records = [record(ray_file, logging.INFO, "ray-info"), record(ray_file, logging.DEBUG, "ray-debug"),
               record(ray_file, logging.WARNING, "ray-warning"), record("/app/mine.py", logging.INFO, "mine")]
    for r in records:
        for h in logging.getLogger().handlers:
            if r.levelno >= h.level and h.filter(r):
                h.handle(r)
    shown = stream.getvalue()
    assert ("ray-info" in shown) is verbose
    assert "ray-warning" in shown and "mine" in shown
    written = log_file.read_text()
    assert written.count("ray-info:INFO") == 1 and "ray-debug" not in written and "mine" not in written and "ray-warning" not in written
