"""Path helpers (target-relative paths)."""

import os


def target_path(target, path=None):
    """``path`` inside ``target`` (absolute ``path`` is taken relative to the target)."""
    target = os.path.abspath(target or "/")
    if not path:
        return target
    return os.path.join(target, path.lstrip("/"))
