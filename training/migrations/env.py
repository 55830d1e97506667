"""Alembic's environment for the results database: the connection comes from `training.results.migrate`
(or `sqlalchemy.url` of the Alembic config), the target schema from `training.results.metadata`."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from training.results import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # the `alembic` command line, with -x url=... or sqlalchemy.url set
    url = context.get_x_argument(as_dictionary=True).get("url") or context.config.get_main_option(
        "sqlalchemy.url"
    )
    connection = create_engine(url).connect()
# SQLite cannot ALTER most things in place: batch mode copies the table instead.
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    transaction_per_migration=True,
)
with context.begin_transaction():
    context.run_migrations()
