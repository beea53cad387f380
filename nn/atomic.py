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
