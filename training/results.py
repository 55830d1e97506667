"""The results database: one row per ingested document (by sha256), its state and, once read, its record.

A document moves `pending` -> `extracted` -> `stored` | `review`, or to `quarantine` at any step; `pending`
and `extracted` are the retryable states a failed run leaves behind. Every write is an upsert on the sha256,
so re-running any step never stores a document twice. SQLite by default, any SQLAlchemy URL (PostgreSQL)
by configuration; torch-free, so Airflow's environment runs it. The schema is Alembic's
(training/migrations/): `connect` brings a database to the newest revision, `invoice db migrate` too.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from training.config import PROJECT_ROOT, load_params, setting

FINAL_STATES = ("stored", "review", "quarantine")
RETRYABLE_STATES = ("pending", "extracted")

metadata = sa.MetaData()
documents = sa.Table(
    "documents",
    metadata,
    sa.Column("sha256", sa.String(64), primary_key=True),
    sa.Column("file_name", sa.String(512), nullable=False),
    sa.Column("path", sa.String(1024), nullable=False, doc="where the document's bytes are kept now"),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("reason", sa.Text, doc="why it is quarantined or sent to review"),
    sa.Column("pages", sa.Integer),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("duplicates", sa.Integer, nullable=False, default=0, doc="later deliveries of the same bytes"),
    sa.Column("run_id", sa.String(250), doc="the processing run that last changed the row"),
    sa.Column("fields", sa.JSON),
    sa.Column("confidence", sa.JSON),
    sa.Column("checks", sa.JSON, doc="failed validation rules"),
    sa.Column("model_name", sa.String(250)),
    sa.Column("model_version", sa.String(64)),
    sa.Column("model_run_id", sa.String(64)),
    sa.Column("data_version", sa.String(128)),
    sa.Column("reviewed_by", sa.String(250)),
    sa.Column("reviewed_at", sa.DateTime(timezone=True)),
    # a status's documents oldest first (retryable work, the review queue); a run's documents in a status (export)
    sa.Index("ix_documents_status_received", "status", "received_at"),
    sa.Index("ix_documents_run_status", "run_id", "status"),
)
MIGRATIONS = Path(__file__).parent / "migrations"
# Revision of the schema `documents` had before migrations existed (metadata.create_all).
BASELINE = "0001"


def default_url(project_root: Path = PROJECT_ROOT) -> str:
    """The SQLite database a project keeps under its var/results/ when nothing else is configured."""
    return f"sqlite:///{project_root / 'var' / 'results' / 'invoices.db'}"


def results_url() -> str:
    """`INVOICE_RESULTS_URL`, else params.yaml `process.results_url`, else the project's SQLite default."""
    return setting("INVOICE_RESULTS_URL", load_params("process"), "results_url", default_url())


def engine_for(url: str | None = None) -> sa.Engine:
    """An engine on the results database (default: the configured one), as it is."""
    url = url or results_url()
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return sa.create_engine(url, pool_pre_ping=True)


def connect(url: str | None = None) -> sa.Engine:
    """An engine on the results database, migrated to the newest schema."""
    engine = engine_for(url)
    migrate(engine)
    return engine


def create_database(url: str) -> bool:
    """Create the PostgreSQL database `url` names if it does not exist; returns whether it was created."""
    target = sa.make_url(url)
    if not target.drivername.startswith("postgresql"):
        raise ValueError(f"only PostgreSQL databases are created this way, not {target.drivername}")
    server = sa.create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with server.connect() as connection:
            exists = connection.execute(
                sa.text("select 1 from pg_database where datname = :name"), {"name": target.database}
            ).first()
            if not exists:
                quoted = connection.dialect.identifier_preparer.quote(target.database)
                connection.execute(sa.text(f"create database {quoted}"))
    finally:
        server.dispose()
    return not exists


def _current(connection: sa.Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


def revision(engine: sa.Engine) -> str | None:
    """The schema revision the database is at (None: no schema yet)."""
    with engine.connect() as connection:
        return _current(connection)


def migrate(engine: sa.Engine, target: str = "head", downgrade: bool = False) -> str | None:
    """Upgrade the schema to `target` (or downgrade to it); returns the revision reached. Safe from many processes
    at once: on PostgreSQL they queue on an advisory lock. A table made before migrations existed is recorded
    as the baseline first."""
    from alembic import command
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(sa.text("select pg_advisory_xact_lock(hashtext('invoice results schema'))"))
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.attributes["connection"] = connection
        if _current(connection) is None and sa.inspect(connection).has_table("documents"):
            command.stamp(config, BASELINE)
        if downgrade:
            command.downgrade(config, target)
        elif not (
            target == "head"
            and _current(connection) == ScriptDirectory.from_config(config).get_current_head()
        ):
            command.upgrade(config, target)
        return _current(connection)


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _insert(engine: sa.Engine):
    if engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(documents)


def receive(engine: sa.Engine, sha256: str, file_name: str, path: str, run_id: str | None) -> bool:
    """Record a delivered file: a new row (`pending`) when its bytes are new, else one more duplicate.
    Returns whether it was new."""
    stamp = now()
    statement = (
        _insert(engine)
        .values(
            sha256=sha256,
            file_name=file_name,
            path=path,
            status="pending",
            received_at=stamp,
            updated_at=stamp,
            duplicates=0,
            run_id=run_id,
        )
        .on_conflict_do_update(
            index_elements=["sha256"],
            set_={"duplicates": documents.c.duplicates + 1, "updated_at": stamp},
        )
        .returning(documents.c.duplicates)
    )
    with engine.begin() as connection:
        return connection.execute(statement).scalar_one() == 0


def update(engine: sa.Engine, sha256: str, **values: Any) -> None:
    """Change an existing row's columns (status, record, lineage...)."""
    unknown = set(values) - set(documents.c.keys())
    if unknown:
        raise ValueError(f"unknown result columns: {sorted(unknown)}")
    with engine.begin() as connection:
        changed = connection.execute(
            documents.update().where(documents.c.sha256 == sha256).values(updated_at=now(), **values)
        ).rowcount
    if changed != 1:
        raise KeyError(f"no document {sha256} in the results database")


def fetch(
    engine: sa.Engine,
    shas: Iterable[str] | None = None,
    status: Iterable[str] | None = None,
    run_id: str | None = None,
):
    """Rows as dicts, filtered by sha256, status and/or the run that last changed them, oldest first."""
    query = sa.select(documents).order_by(documents.c.received_at, documents.c.sha256)
    if run_id is not None:
        query = query.where(documents.c.run_id == run_id)
    if shas is not None:
        query = query.where(documents.c.sha256.in_(list(shas)))
    if status is not None:
        query = query.where(documents.c.status.in_(list(status)))
    with engine.connect() as connection:
        return [dict(row._mapping) for row in connection.execute(query)]


def counts(engine: sa.Engine, run_id: str | None = None) -> dict[str, int]:
    """Documents per status, for one processing run or overall."""
    query = sa.select(documents.c.status, sa.func.count()).group_by(documents.c.status)
    if run_id is not None:
        query = query.where(documents.c.run_id == run_id)
    with engine.connect() as connection:
        return {status: n for status, n in connection.execute(query)}
