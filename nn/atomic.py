"""Write files so that a crash never leaves half of one: a temporary file, then a rename."""
import os
import uuid


def atomic_write(path, write):
    """Create or replace `path` atomically: `write(tmp_path)` fills a temporary file beside
    it, which is then renamed over `path` (os.replace is atomic on one file system).

    A crash or an exception midway leaves the previous `path` untouched and removes the
    temporary file. Returns `path`.
    """
    path = os.fspath(path)
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def check_writable(path):
    """Raise OSError (with a message to show) unless atomic_write(path, ...) could write:
    the folder is created as atomic_write would, and a probe file written and removed.
    For checking an output path before long work rather than after it."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise OSError(f"{path} is a folder, not a file")
    directory = os.path.dirname(os.path.abspath(path))
    probe = os.path.join(directory, f".write-probe-{uuid.uuid4().hex[:8]}")
    try:
        os.makedirs(directory, exist_ok=True)
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as exc:
        raise OSError(f"cannot write into {directory}: {exc.strerror or exc}") from None
