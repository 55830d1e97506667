"""The results database's schema, made and changed by Alembic (training/migrations/), on SQLite and on the
machine's PostgreSQL: the migrations build exactly the table the code declares, with the indexes its queries
use, go down and up again, adopt a database made before migrations existed, and race safely."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from services import postgres_database

from training import results

HEAD = "0002"


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'results.db'}"
    else:
        with postgres_database("invoice_test_migrations") as database:
            yield database


def schema_drift(engine: sa.Engine) -> list:
    """What Alembic's autogenerate would still change to reach the declared table (nothing, when in step)."""
    with engine.connect() as connection:
        return compare_metadata(MigrationContext.configure(connection), results.metadata)


def index_columns(engine: sa.Engine) -> dict[str, list[str]]:
    return {index["name"]: index["column_names"] for index in sa.inspect(engine).get_indexes("documents")}


def test_migrations_build_the_declared_table_with_its_query_indexes(url):
    engine = results.connect(url)
    assert results.revision(engine) == HEAD
    assert schema_drift(engine) == []
    assert index_columns(engine) == {
        "ix_documents_status_received": ["status", "received_at"],
        "ix_documents_run_status": ["run_id", "status"],
    }
    # the planner uses them: the export's query is an index lookup, not a scan of every document
    if engine.dialect.name == "postgresql":
        with engine.begin() as connection:
            connection.execute(sa.text("set local enable_seqscan = off"))
            plan = connection.execute(
                sa.text("explain select * from documents where run_id = 'r' and status = 'stored'")
            ).scalars()
            assert "ix_documents_run_status" in " ".join(plan)
    engine.dispose()


def test_migrations_go_down_and_up_keeping_the_rows(url):
    engine = results.connect(url)
    results.receive(engine, "a" * 64, "one.png", "/documents/one.png", "run-1")
    assert results.migrate(engine, "0001", downgrade=True) == "0001"
    assert set(index_columns(engine)) == {"ix_documents_status", "ix_documents_run_id"}
    assert results.migrate(engine) == HEAD
    assert [row["file_name"] for row in results.fetch(engine, run_id="run-1", status=["pending"])] == [
        "one.png"
    ]
    engine.dispose()


def test_a_database_made_before_migrations_is_adopted_not_recreated(url):
    """The table `metadata.create_all` used to make (single-column indexes, no alembic_version): stamped as
    the baseline, then upgraded, its rows kept."""
    engine = results.engine_for(url)
    legacy = sa.MetaData()
    table = results.documents.to_metadata(legacy)
    for index in list(table.indexes):
        table.indexes.discard(index)
    sa.Index("ix_documents_status", table.c.status)
    sa.Index("ix_documents_run_id", table.c.run_id)
    legacy.create_all(engine)
    now = results.now()
    with engine.begin() as connection:
        connection.execute(
            table.insert().values(
                sha256="b" * 64, file_name="old.pdf", path="p", status="stored", received_at=now, updated_at=now,
                duplicates=0,
            )
        )  # fmt: skip
    assert results.revision(engine) is None
    assert results.migrate(engine) == HEAD
    assert schema_drift(engine) == [] and [r["file_name"] for r in results.fetch(engine)] == ["old.pdf"]
    engine.dispose()


def test_processes_connecting_at_once_to_a_new_postgresql_database_migrate_it_once():
    with postgres_database("invoice_test_race") as url:
        with ThreadPoolExecutor(6) as pool:
            engines = list(pool.map(lambda _: results.connect(url), range(6)))
        assert {results.revision(engine) for engine in engines} == {HEAD}
        with engines[0].connect() as connection:
            assert connection.execute(sa.text("select count(*) from alembic_version")).scalar_one() == 1
        for engine in engines:
            engine.dispose()
