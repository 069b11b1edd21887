"""Engine, sessions and migrations for the catalog.

SQLite: WAL, a busy timeout, foreign keys and ``synchronous=NORMAL`` are set on every connection;
the driver's own transaction handling is switched off so that we emit ``BEGIN`` ourselves, and
``BEGIN IMMEDIATE`` for write transactions (a deferred transaction that reads and then writes can
fail with SQLITE_BUSY even with a timeout). PostgreSQL needs none of this. Alembic owns the schema
and runs on first use, serialised across processes.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import (
    Column,
    Engine,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    create_engine,
    event,
    inspect,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from storage.retry import retrying, wait_for_connections

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
_IMMEDIATE: contextvars.ContextVar[bool] = contextvars.ContextVar("unmark_sqlite_immediate", default=False)
# An arbitrary constant: the PostgreSQL advisory lock that serialises migrations.
_PG_MIGRATION_LOCK = 0x756E6D61726B
T = TypeVar("T")


def default_catalog_url(home: Path) -> str:
    """The catalog of a home folder when ``UNMARK_CATALOG_URL`` is not set: SQLite inside it."""
    return f"sqlite:///{(Path(home).expanduser() / 'catalog.sqlite').resolve()}"


def catalog_url_from_env() -> str:
    """``UNMARK_CATALOG_URL``, else the default catalog of ``UNMARK_HOME`` (``./data``); for the
    alembic command line, which runs without the pipeline's settings."""
    return os.environ.get("UNMARK_CATALOG_URL") or default_catalog_url(Path(os.environ.get("UNMARK_HOME", "./data")))


class CatalogError(RuntimeError):
    """The catalog could not be opened or migrated."""


def _sqlite_pragmas(engine: Engine, busy_timeout_ms: int) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (see "begin" below)
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE" if _IMMEDIATE.get() else "BEGIN")


def make_engine(url: str, busy_timeout_ms: int = 60_000, retry_s: float = 60.0) -> Engine:
    """One engine per process. SQLite files get their folder created and the pragmas above; a
    server's connections are pinged at checkout and retried for ``retry_s`` while it restarts
    (``storage.retry``)."""
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        if u.database and u.database != ":memory:":
            Path(u.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(u, connect_args={"timeout": busy_timeout_ms / 1000})
        _sqlite_pragmas(engine, busy_timeout_ms)
        return engine
    engine = create_engine(u, pool_pre_ping=True)
    wait_for_connections(engine, retry_s)
    return engine


def _alembic_config(connection=None) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


_REVISION = re.compile(r"^revision(?:\s*:[^=\n]*)?\s*=\s*['\"]([^'\"]+)['\"]\s*$", re.M)
_DOWN_REVISION = re.compile(r"^down_revision(?:\s*:[^=\n]*)?\s*=\s*(None|['\"]([^'\"]+)['\"])\s*$", re.M)


@functools.cache
def _linear_head() -> str | None:
    """The head revision read from the migration files' ``revision = …`` / ``down_revision = …``
    lines without importing Alembic (about a fifth of a second of start-up), or None when the
    history is not one plain chain (merges, branches, an unexpected layout): callers then ask
    Alembic. Only ever used to skip a migration when the database is already at this head."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in sorted((MIGRATIONS_DIR / "versions").glob("*.py")):
        src = path.read_text(encoding="utf-8")
        rev, down = _REVISION.findall(src), _DOWN_REVISION.findall(src)
        if len(rev) != 1 or len(down) != 1 or rev[0] in revisions:
            return None
        revisions.add(rev[0])
        if down[0][0] != "None":
            parents.add(down[0][1])
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 and parents <= revisions else None


def _stored_revision(engine: Engine) -> str | None:
    """``alembic_version.version_num`` (None without the table, or with other than one row)."""
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        rows = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    return rows[0] if len(rows) == 1 else None


def _version_table() -> Table:
    """Alembic's own ``alembic_version`` table, as ``MigrationContext`` creates it."""
    return Table("alembic_version", MetaData(), Column("version_num", String(32), nullable=False),
                 PrimaryKeyConstraint("version_num", name="alembic_version_pkc"))


@contextlib.contextmanager
def _schema_transaction(engine: Engine) -> Iterator[Any]:
    """One transaction that changes the schema, one process at a time: on SQLite it holds the write
    lock from its start (BEGIN IMMEDIATE), on PostgreSQL the migration advisory lock."""
    token = _IMMEDIATE.set(True)
    try:
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
            yield conn
    finally:
        _IMMEDIATE.reset(token)


def _create_at_head(engine: Engine, head: str) -> bool:
    """An empty database gets the head schema in one transaction: the tables of ``storage.models``
    (which ``test_migrated_schema_matches_the_models`` and ``test_fresh_schema_is_the_migrated_one``
    hold equal to what the migrations build) and ``alembic_version`` naming ``head``, as Alembic's
    ``stamp`` would write it; later migrations then run from there as usual. Returns False, having
    changed nothing, when the database holds any table (another process got there first)."""
    from storage.models import Base

    with _schema_transaction(engine) as conn:
        if inspect(conn).get_table_names():
            return False
        Base.metadata.create_all(conn)
        version = _version_table()
        version.create(conn)
        conn.execute(version.insert().values(version_num=head))
    return True


def migrate(engine: Engine) -> str | None:
    """Upgrade the schema to head. Safe to call from several processes at once.

    A catalog already at head (the revision its ``alembic_version`` names is the head of the
    migration files) is left as it is, and an empty database is created at head directly (see
    ``_create_at_head``), both without importing Alembic (about 0.15 s of a short command);
    anything else goes through Alembic's upgrade."""
    head = _linear_head()
    if head is not None:
        stored = _stored_revision(engine)
        if stored == head:
            return head
        if stored is None and _create_at_head(engine, head):
            return head
    from alembic import command

    head = head_revision()
    if current_revision(engine) == head:
        return head
    with _schema_transaction(engine) as conn:
        command.upgrade(_alembic_config(conn), "head")
    return head


class Catalog:
    """The catalog of one process: an engine, a session factory, and read/write sessions."""

    def __init__(self, url: str, busy_timeout_ms: int = 60_000, write_batch_size: int = 500, retry_s: float = 60.0):
        self.url = url
        self.retry_s = retry_s
        self.engine = make_engine(url, busy_timeout_ms, retry_s)
        self.write_batch_size = write_batch_size
        self._sessions = sessionmaker(self.engine, expire_on_commit=False, autoflush=False)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """A read session (rolled back at the end; use ``write()`` to change anything)."""
        with self._sessions() as s:
            try:
                yield s
            finally:
                s.rollback()

    @contextlib.contextmanager
    def write(self) -> Iterator[Session]:
        """A write transaction, committed on success. On SQLite it takes the write lock up front
        (``BEGIN IMMEDIATE``), so concurrent writers queue on the busy timeout instead of failing."""
        token = _IMMEDIATE.set(True)
        try:
            with self._sessions() as s, s.begin():
                s.connection()  # begin now, inside the IMMEDIATE context
                yield s
        finally:
            _IMMEDIATE.reset(token)

    def retry(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)``, one whole transaction, run again after a lost connection for up
        to ``retry_s`` (``storage.retry.retrying``)."""
        return retrying(fn, *args, deadline_s=self.retry_s, url=make_url(self.url).render_as_string(), **kwargs)

    def read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(session, *args, **kwargs)`` in a read session, retried like ``retry``."""
        def once() -> T:
            with self.session() as s:
                return fn(s, *args, **kwargs)
        return self.retry(once)

    def transact(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(session, *args, **kwargs)`` in one write transaction, retried whole like ``retry``."""
        def once() -> T:
            with self.write() as s:
                return fn(s, *args, **kwargs)
        return self.retry(once)

    def migrate(self) -> str | None:
        return migrate(self.engine)

    def dispose(self) -> None:
        self.engine.dispose()


def open_catalog(settings: Any = None, *, url: str | None = None, migrate_schema: bool = True) -> Catalog:
    """Open (and by default migrate) the catalog named by ``settings.catalog_url`` or ``url``.

    ``settings`` is the pipeline's storage stage (``Settings.storage``): ``catalog_url``,
    ``sqlite_busy_timeout_ms``, ``write_batch_size`` and ``catalog_retry_s``."""
    from storage.integrity import CatalogCorrupt, check_sqlite_file, file_of, is_malformed, sqlite_path

    if url is None:
        url = settings.catalog_url
    if (path := sqlite_path(url)) is not None:
        check_sqlite_file(path)  # a file cut short is named here, not deep in a step
    kwargs = {}
    if settings is not None:
        kwargs = {"busy_timeout_ms": settings.sqlite_busy_timeout_ms, "write_batch_size": settings.write_batch_size,
                  "retry_s": settings.catalog_retry_s}
    cat = Catalog(url, **kwargs)
    if migrate_schema:
        try:
            cat.migrate()
        except Exception as exc:  # re-raised with the URL for a clear message
            cat.dispose()
            if is_malformed(exc):
                raise CatalogCorrupt(file_of(url), str(getattr(exc, "orig", exc))) from exc
            raise CatalogError(f"could not migrate catalog {make_url(url).render_as_string()}: {exc}") from exc
    return cat


def dialect_insert(session: Session):
    """The ``insert`` construct of the session's dialect (it has ``on_conflict_do_*``)."""
    return {"sqlite": sqlite.insert, "postgresql": postgresql.insert}[session.get_bind().dialect.name]


def insert_ignore(session: Session, model: type, rows: Sequence[dict], conflict_cols: Iterable[str]) -> None:
    """Batched ``INSERT … ON CONFLICT DO NOTHING`` (SQLite and PostgreSQL): one Core executemany
    on the model's table per set of keys (the ORM's bulk path costs several times the CPU for the
    same rows); column defaults (``default=utcnow``, …) apply as they do through the ORM."""
    if not rows:
        return
    groups: dict[tuple[str, ...], list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(sorted(row)), []).append(row)
    table = getattr(model, "__table__", model)
    stmt = dialect_insert(session)(table).on_conflict_do_nothing(index_elements=list(conflict_cols))
    for part in groups.values():
        session.execute(stmt, part)


def upsert(session: Session, model: type, row: dict, conflict_cols: Iterable[str], update: dict) -> Any:
    """One ``INSERT … ON CONFLICT (…) DO UPDATE SET …`` (SQLite and PostgreSQL); returns the row's
    primary key. Atomic, so concurrent writers of the same row (several workers on PostgreSQL)
    neither collide on the unique key nor lose each other's increments."""
    pk = model.__table__.primary_key.columns.values()[0]
    stmt = dialect_insert(session)(model).values(**row)
    stmt = stmt.on_conflict_do_update(index_elements=list(conflict_cols), set_=update).returning(pk)
    return session.execute(stmt).scalar_one()


def chunked(items: Sequence, size: int) -> Iterator[Sequence]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
