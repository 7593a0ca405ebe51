"""Where a study lives: storage URLs, the default journal file, and the artifact store beside it.

* default (no URL, or a file path): one Optuna journal file, ``./archscale.journal``
  (JournalStorage + ``journal.JournalFile``, Optuna's file backend with a torn last record set
  aside). Nothing to install; several worker processes on one machine (or on machines sharing
  the file system) append to it safely.
* ``sqlite:///study.db``: Optuna's RDB storage on SQLite, for ONE worker (SQLite's locking does
  not suit parallel writers: Optuna's FAQ).
* ``postgresql://user@host/db``: RDB storage on PostgreSQL, for workers on many machines.
  ``postgresql://`` picks whichever driver is installed (psycopg 3, else psycopg2).
  Keep its password out of the URL: libpq reads ``PGPASSWORD`` and ``~/.pgpass`` for a URL
  without one. ``--storage`` also reads ``$ARCHSCALE_STORAGE``, and workers get the URL there.

Credentials never leave this process: every URL that is shown, logged or saved (provenance,
reports, recommendations, status, errors) goes through ``display_url``, which hides the password.

Trials whose worker died are found and retried by ``archscale.search.recovery``, alike on all
three (its heartbeat is a trial system attr). optuna-dashboard opens all three::

    optuna-dashboard ./archscale.journal --artifact-dir ./archscale.artifacts

Artifacts (loss curves, checkpoints) go to a FileSystemArtifactStore in ``<storage stem>.artifacts``
beside a journal or SQLite file, and in ``./archscale.artifacts`` for a server (pass a shared
folder with ``--artifacts`` when workers run on several machines).
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from optuna.artifacts import FileSystemArtifactStore
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileSymlinkLock
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection
from sqlalchemy.pool import NullPool

from archscale.arch.errors import ArchscaleError, SettingError
from archscale.search.defaults import DEFAULT_STORAGE  # the light names, stated there
from archscale.search.journal import JournalFile
from archscale.search.outages import (
    Patience,
    PatientRDBStorage,
    StorageUnavailable,
    driver_message,
)
from archscale.search.passwords import HIDDEN as HIDDEN  # re-exported: storage's callers
from archscale.search.passwords import display_url as display_url
from archscale.search.passwords import has_password as has_password
from archscale.search.passwords import hide_in_text as hide_in_text
from archscale.search.passwords import hide_passwords as hide_passwords

DEFAULT_ARTIFACTS = "archscale.artifacts"
"""Artifact folder of server storages (in the working directory)."""


def storage_kind(url: str) -> str:
    """'journal', 'sqlite' or 'rdb' (any other SQLAlchemy URL: PostgreSQL, MySQL)."""
    if "://" not in url:
        return "journal"
    return "sqlite" if url.startswith("sqlite:") else "rdb"


def locate(url: str | None) -> str:
    """The storage as the user gave it, made independent of the working directory: the default
    journal, an absolute journal path, or the database URL unchanged (what is shown, and what
    worker processes get)."""
    url = url or DEFAULT_STORAGE
    return str(Path(url).expanduser().resolve()) if storage_kind(url) == "journal" else url


def resolve_url(url: str | None) -> str:
    """The URL to open: ``locate(url)``, with PostgreSQL's installed driver named."""
    url = locate(url)
    scheme, sep, rest = url.partition("://")
    if scheme in ("postgresql", "postgres"):
        # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; use what is installed.
        for module, driver in (("psycopg", "psycopg"), ("psycopg2", "psycopg2")):
            if importlib.util.find_spec(module) is not None:
                return f"postgresql+{driver}{sep}{rest}"
        raise ArchscaleError("PostgreSQL storage needs a driver: pip install 'archscale[postgres]' "
                             "(psycopg2-binary) or 'psycopg[binary]'")
    return url


def open_storage(url: str | None = None, *, wait_s: float = 0) -> BaseStorage:
    """Open (creating if needed) the storage at ``url``. With ``wait_s``, a database storage rides
    out an outage of up to that many seconds in each call (``outages.PatientRDBStorage``)."""
    given, url = locate(url), resolve_url(url)
    if storage_kind(url) == "journal":
        path = Path(url)
        if path.is_dir():
            raise SettingError(f"{{url}} {path} is a folder: give a file such as "
                               f"{path / DEFAULT_STORAGE}")
        if path.is_file() and path.read_bytes()[:16] == b"SQLite format 3\x00":
            raise SettingError(f"{path} is a SQLite database: give {{url}} as sqlite:///{path}")
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFile(path))
    shown = display_url(given)
    options: dict[str, Any] = {"engine_kwargs": {"pool_pre_ping": True}}
    try:
        # RDBStorage creates Optuna's tables on a new database; two workers or `study create`s
        # starting at once on it would both issue CREATE TABLE and one would fail
        patience = (Patience(shown, wait_s, lambda text: hide_in_text(text, given))
                    if wait_s > 0 else None)
        with schema_lock(url, patience):
            if patience is not None:
                return PatientRDBStorage(url, patience, **options)
            return RDBStorage(url, **options)
    except StorageUnavailable as err:
        raise ArchscaleError(f"cannot open storage {shown}\n{err.driver}") from None
    except ImportError as err:
        raise ArchscaleError(f"cannot open storage {shown}: install its database driver\n"
                             + hide_in_text(str(err), given)) from None
    except Exception as err:  # SQLAlchemy: unreachable server, bad credentials, bad URL
        raise ArchscaleError(f"cannot open storage {shown}\n"
                             + hide_in_text(driver_message(err), given)) from None


@contextmanager
def creation_lock(storage: BaseStorage, url: str, name: str) -> Iterator[None]:
    """Hold, across processes, the right to create study ``name`` and enqueue its runs, so two
    ``study create`` (or ``study run``) at once give one study with each run once.

    PostgreSQL: a session advisory lock, freed by the server if the holder dies. A journal or
    SQLite file: Optuna's symlink lock on ``<file>.create`` (broken after its grace period if the
    holder died). Other servers take no lock.
    """
    if isinstance(storage, RDBStorage) and storage.engine.dialect.name == "postgresql":
        with storage.engine.connect() as conn, advisory_lock(conn, f"archscale study {name}"):
            yield
        return
    file = storage_file(url)
    if file is None:
        yield
        return
    lock = JournalFileSymlinkLock(f"{file}.create")
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


@contextmanager
def schema_lock(url: str, patience: Patience | None = None) -> Iterator[None]:
    """On PostgreSQL, hold the right to create Optuna's tables (one holder at a time across
    processes and machines); elsewhere nothing: a file storage is created under its own lock.
    With ``patience``, connecting rides out an outage as the storage's own calls do."""
    if not url.startswith("postgresql"):
        yield
        return
    engine = create_engine(url, poolclass=NullPool)
    try:
        conn = engine.connect() if patience is None else patience.call(engine.connect)
        with conn, advisory_lock(conn, "archscale optuna schema"):
            yield
    finally:
        engine.dispose()


@contextmanager
def advisory_lock(conn: Connection, name: str) -> Iterator[None]:
    """A PostgreSQL session advisory lock named ``name`` on ``conn``, freed by the server if the
    holder dies."""
    key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
    conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
    try:
        yield
    finally:
        conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})


def artifact_dir(url: str | None, override: str | Path | None = None) -> Path:
    """The artifact folder of a storage: ``override``, else beside its file, else in the cwd."""
    if override is not None:
        return Path(override).expanduser().resolve()
    file = storage_file(url)
    return file.with_suffix(".artifacts") if file else Path(DEFAULT_ARTIFACTS).resolve()


def storage_file(url: str | None) -> Path | None:
    """The file a journal or SQLite storage lives in; None for a server or in-memory SQLite."""
    url = resolve_url(url)
    kind = storage_kind(url)
    if kind == "journal" or (kind == "sqlite" and url.startswith("sqlite:///")
                             and ":memory:" not in url):
        return Path(url if kind == "journal" else url.removeprefix("sqlite:///")).resolve()
    return None


def artifact_store(url: str | None, override: str | Path | None = None) -> FileSystemArtifactStore:
    folder = artifact_dir(url, override)
    folder.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(folder))
