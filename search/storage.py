"""Where a study lives: storage URLs, the default journal file, and the artifact store beside it.

* default (no URL, or a file path): one Optuna journal file, ``./archscale.journal``
  (JournalStorage + JournalFileBackend). Nothing to install; several worker processes on one
  machine (or on machines sharing the file system) append to it safely.
* ``sqlite:///study.db``: Optuna's RDB storage on SQLite, for ONE worker (SQLite's locking does
  not suit parallel writers: Optuna's FAQ).
* ``postgresql://user@host/db``: RDB storage on PostgreSQL, for workers on many machines.
  ``postgresql://`` picks whichever driver is installed (psycopg 3, else psycopg2).
  Keep its password out of the URL: libpq reads ``PGPASSWORD`` and ``~/.pgpass`` for a URL
  without one. ``--storage`` also reads ``$ARCHSCALE_STORAGE``, and workers get the URL there.

Credentials never leave this process: every URL that is shown, logged or saved (provenance,
reports, recommendations, status, errors) goes through ``display_url``, which hides the password.

On RDB storages Optuna's heartbeat marks a trial whose worker stopped beating as FAIL and
``RetryStaleTrial`` re-enqueues it; the journal has no heartbeat in Optuna, so
``archscale.search.recovery`` does the same there. optuna-dashboard opens all three::

    optuna-dashboard ./archscale.journal --artifact-dir ./archscale.artifacts

Artifacts (loss curves, checkpoints) go to a FileSystemArtifactStore in ``<storage stem>.artifacts``
beside a journal or SQLite file, and in ``./archscale.artifacts`` for a server (pass a shared
folder with ``--artifacts`` when workers run on several machines).
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import optuna
from optuna.artifacts import FileSystemArtifactStore
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend

from archscale.arch.errors import ArchscaleError
from archscale.search.defaults import (  # the light names, stated there
    DEFAULT_HEARTBEAT_S,
    DEFAULT_STORAGE,
)
from archscale.search.passwords import HIDDEN as HIDDEN  # re-exported: storage's callers
from archscale.search.passwords import display_url as display_url
from archscale.search.passwords import has_password as has_password
from archscale.search.passwords import hide_in_text as hide_in_text
from archscale.search.passwords import hide_passwords as hide_passwords
from archscale.search.recovery import MAX_RETRIES, RetryStaleTrial

DEFAULT_ARTIFACTS = "archscale.artifacts"
"""Artifact folder of server storages (in the working directory)."""


def storage_kind(url: str) -> str:
    """'journal', 'sqlite' or 'rdb' (any other SQLAlchemy URL: PostgreSQL, MySQL)."""
    if "://" not in url:
        return "journal"
    return "sqlite" if url.startswith("sqlite:") else "rdb"


def resolve_url(url: str | None) -> str:
    """The storage URL to use: the default journal, an absolute journal path, or a database URL.

    A journal path is made absolute, so workers started elsewhere open the same file.
    """
    url = url or DEFAULT_STORAGE
    if storage_kind(url) == "journal":
        return str(Path(url).expanduser().resolve())
    scheme, sep, rest = url.partition("://")
    if scheme in ("postgresql", "postgres"):
        # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; use what is installed.
        for module, driver in (("psycopg", "psycopg"), ("psycopg2", "psycopg2")):
            if importlib.util.find_spec(module) is not None:
                return f"postgresql+{driver}{sep}{rest}"
        raise ArchscaleError("PostgreSQL storage needs a driver: pip install 'archscale[postgres]' "
                             "(psycopg2-binary) or 'psycopg[binary]'")
    return url


def open_storage(url: str | None = None, *, heartbeat_s: int = DEFAULT_HEARTBEAT_S,
                 grace_s: int | None = None) -> BaseStorage:
    """Open (creating if needed) the storage at ``url``.

    ``heartbeat_s``/``grace_s`` configure Optuna's heartbeat on RDB storages: a RUNNING trial
    without a heartbeat for ``grace_s`` seconds (default 2 x heartbeat_s + 10) is failed and
    retried. The journal records the same heartbeat in the trial (``recovery.Heartbeat``).
    """
    url = resolve_url(url)
    if storage_kind(url) == "journal":
        path = Path(url)
        if path.is_dir():
            raise ArchscaleError(f"storage {path} is a folder: give a file such as "
                                 f"{path / DEFAULT_STORAGE}")
        if path.is_file() and path.read_bytes()[:16] == b"SQLite format 3\x00":
            raise ArchscaleError(f"{path} is a SQLite database: use --storage sqlite:///{path}")
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            return RDBStorage(url, heartbeat_interval=heartbeat_s,
                              grace_period=grace_s or default_grace(heartbeat_s),
                              heartbeat_stale_trial_callback=RetryStaleTrial(MAX_RETRIES),
                              engine_kwargs={"pool_pre_ping": True})
        except ImportError as err:
            raise ArchscaleError(hide_in_text(f"cannot open {display_url(url)}: {err} (install "
                                              "the database driver)", url)) from None
        except Exception as err:  # SQLAlchemy: unreachable server, bad credentials, bad URL
            first = str(err).splitlines()[0] if str(err) else ""
            raise ArchscaleError(hide_in_text(f"cannot open storage {display_url(url)}: "
                                              f"{type(err).__name__}: {first}", url)) from None


def default_grace(heartbeat_s: int) -> int:
    return 2 * heartbeat_s + 10


def artifact_dir(url: str | None, override: str | Path | None = None) -> Path:
    """The artifact folder of a storage: ``override``, else beside its file, else in the cwd."""
    if override is not None:
        return Path(override).expanduser().resolve()
    url = resolve_url(url)
    kind = storage_kind(url)
    if kind == "journal" or (kind == "sqlite" and url.startswith("sqlite:///")
                             and ":memory:" not in url):
        path = Path(url if kind == "journal" else url.removeprefix("sqlite:///"))
        return path.resolve().with_suffix(".artifacts")
    return Path(DEFAULT_ARTIFACTS).resolve()


def artifact_store(url: str | None, override: str | Path | None = None) -> FileSystemArtifactStore:
    folder = artifact_dir(url, override)
    folder.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(folder))
