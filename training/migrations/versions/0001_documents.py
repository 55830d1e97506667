"""The documents table as the platform first created it (one row per ingested document, by sha256).

Revision ID: 0001
Revises:
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "documents",
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("file_name", sa.String(512), nullable=False),
        sa.Column("path", sa.String(1024), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("pages", sa.Integer),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("duplicates", sa.Integer, nullable=False),
        sa.Column("run_id", sa.String(250)),
        sa.Column("fields", sa.JSON),
        sa.Column("confidence", sa.JSON),
        sa.Column("checks", sa.JSON),
        sa.Column("model_name", sa.String(250)),
        sa.Column("model_version", sa.String(64)),
        sa.Column("model_run_id", sa.String(64)),
        sa.Column("data_version", sa.String(128)),
        sa.Column("reviewed_by", sa.String(250)),
        sa.Column("reviewed_at", sa.DateTime(timezone=True)),
    )
    op.create_index("ix_documents_status", "documents", ["status"])
    op.create_index("ix_documents_run_id", "documents", ["run_id"])


def downgrade() -> None:
    op.drop_table("documents")
