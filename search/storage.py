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
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from optuna.artifacts import FileSystemArtifactStore
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileSymlinkLock
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from archscale.arch.errors import ArchscaleError
from archscale.search.defaults import DEFAULT_STORAGE  # the light names, stated there
from archscale.search.journal import JournalFile
from archscale.search.outages import (
    Patience,
    PatientRDBStorage,
    StorageUnavailable,
    driver_message,
)

DEFAULT_ARTIFACTS = "archscale.artifacts"
"""Artifact folder of server storages (in the working directory)."""
HIDDEN = "***"
"""What a hidden password is shown as (SQLAlchemy's own mark)."""


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


def display_url(url: str | None) -> str:
    """``url`` as it may be shown, logged or saved: a database URL with its password as ``***``.

    SQLAlchemy parses it (the parser that opens it, so what is hidden is what would be sent), also
    a ``?password=`` query. Journal paths and URLs without a password come back unchanged.
    """
    if not url or "://" not in url:
        return url or ""
    try:
        parsed = make_url(url)
    except ArgumentError:  # nothing SQLAlchemy opens: hide whatever precedes the host
        scheme, _, rest = url.partition("://")
        return f"{scheme}://{HIDDEN}@{rest.rpartition('@')[2]}" if "@" in rest else url
    if parsed.password is None and "password" not in parsed.query:
        return url
    if "password" in parsed.query:
        parsed = parsed.update_query_dict({"password": HIDDEN})
    return parsed.render_as_string(hide_password=True)


def has_password(url: str | None) -> bool:
    """Whether ``url`` carries a password (that ``display_url`` hides)."""
    return display_url(url) != (url or "")


_TOKEN_GAPS = re.compile(r"(\s+|[`'\"<>])")


def hide_in_text(text: str, url: str | None = None) -> str:
    """``text`` with every URL in it shown by ``display_url``, and ``url``'s password (raw or
    decoded) nowhere: for messages that quote a URL or a driver's error about one."""
    if "://" in text:
        text = "".join(display_url(part) if "://" in part else part
                       for part in _TOKEN_GAPS.split(text))
    if url and has_password(url):
        userinfo = url.partition("://")[2].rpartition("@")[0]
        secrets = {userinfo.partition(":")[2]}  # as written (maybe %-encoded)
        try:
            parsed = make_url(url)
            secrets |= {parsed.password, parsed.query.get("password")}  # decoded
        except ArgumentError:
            pass
        for secret in sorted((s for s in secrets if isinstance(s, str) and s), key=len,
                             reverse=True):
            text = text.replace(secret, HIDDEN)
    return text


def hide_passwords(data: Any, where: str = "") -> tuple[Any, dict[str, str]]:
    """JSON-like ``data`` (dicts, lists, strings) with every URL's password hidden, and where one
    was (``key.key[0]`` -> the string as now shown): for files written before passwords were
    hidden at their source."""
    if isinstance(data, str):
        shown = hide_in_text(data)
        return shown, ({where or ".": shown} if shown != data else {})
    found: dict[str, str] = {}
    if isinstance(data, dict):
        out = {}
        for key, value in data.items():
            out[key], places = hide_passwords(value, f"{where}.{key}" if where else str(key))
            found.update(places)
        return out, found
    if isinstance(data, list | tuple):
        items = []
        for i, value in enumerate(data):
            shown_value, places = hide_passwords(value, f"{where}[{i}]")
            items.append(shown_value)
            found.update(places)
        return items, found
    return data, found


def open_storage(url: str | None = None, *, wait_s: float = 0) -> BaseStorage:
    """Open (creating if needed) the storage at ``url``. With ``wait_s``, a database storage rides
    out an outage of up to that many seconds in each call (``outages.PatientRDBStorage``)."""
    given, url = locate(url), resolve_url(url)
    if storage_kind(url) == "journal":
        path = Path(url)
        if path.is_dir():
            raise ArchscaleError(f"storage {path} is a folder: give a file such as "
                                 f"{path / DEFAULT_STORAGE}")
        if path.is_file() and path.read_bytes()[:16] == b"SQLite format 3\x00":
            raise ArchscaleError(f"{path} is a SQLite database: use --storage sqlite:///{path}")
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFile(path))
    shown = display_url(given)
    options: dict[str, Any] = {"engine_kwargs": {"pool_pre_ping": True}}
    try:
        if wait_s > 0:
            patience = Patience(shown, wait_s, lambda text: hide_in_text(text, given))
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
        digest = hashlib.sha256(f"archscale study {name}".encode()).digest()
        key = int.from_bytes(digest[:8], "big", signed=True)
        with storage.engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
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
