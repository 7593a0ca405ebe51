"""Where a command's output goes: checked writable before any work, and saved elsewhere (the
error names where) when writing it fails after the work is done.

Every command that writes calls ``check_writable`` on each output path first thing, so an
unwritable ``--out`` costs nothing; ``save_or_fallback`` wraps the final write, so an error
after minutes of training or fitting never loses the result.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from archscale import environment
from archscale.arch.errors import ArchscaleError

T = TypeVar("T")


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path.cwd()


def check_writable(path: Path | None, flag: str = "--out", *, folder: bool = False) -> None:
    """Refuse, before any work, an output this process cannot create or replace.

    path: the file (``folder=False``) or folder to write; None (not asked for) passes. Creates
    nothing: the nearest existing folder above the path gets a probe file, removed at once.
    """
    if path is None:
        return
    path = Path(path).expanduser()
    if path.exists():
        if folder and not path.is_dir():
            raise ArchscaleError(f"{flag} {path} is a file: give a folder to write into")
        if not folder and path.is_dir():
            raise ArchscaleError(f"{flag} {path} is a directory: give the path of a file to write")
        if not folder and not os.access(path, os.W_OK):
            raise ArchscaleError(f"{flag} {path} is not writable: fix its permissions or give "
                                 "another path")
    existing = _nearest_existing(path if folder else path.parent)
    if not existing.is_dir():
        raise ArchscaleError(f"{flag} {path} cannot be created: {existing} is a file, not a "
                             "folder; give another path")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise ArchscaleError(f"{flag} {path} cannot be written ({existing}: "
                             f"{err.strerror}): give a path in a folder you can write") from None


def fallback_path(name: str) -> Path:
    """A fresh path to save ``name`` when its own place failed: under $ARCHSCALE_CACHE/unsaved,
    else the temporary folder."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for root in (environment.cache_root() / "unsaved", Path(tempfile.gettempdir())):
        try:
            root.mkdir(parents=True, exist_ok=True)
            return Path(tempfile.mkdtemp(prefix=f"{stamp}-", dir=root)) / name
        except OSError:
            continue
    raise ArchscaleError("no writable folder for a fallback copy (cache and temp both failed)")


def save_or_fallback(save: Callable[[Path], T], path: Path, what: str) -> T:
    """``save(path)``; if that raises OSError, ``save`` to a fallback path and raise an error
    that names it, so the computed result is never lost."""
    try:
        return save(Path(path))
    except OSError as err:
        fallback = fallback_path(Path(path).name)
        save(fallback)
        raise ArchscaleError(f"could not write {what} to {path} ({err.strerror or err}): it is "
                             f"saved at {fallback} instead") from None
