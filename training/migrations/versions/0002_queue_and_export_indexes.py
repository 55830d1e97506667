"""Indexes for what is asked of the table most: a status's documents oldest first (the retryable work of
ingest, the review queue) and one run's documents in a status (export, the run's report). Each replaces the
single-column index it starts with.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-05
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_documents_status_received", "documents", ["status", "received_at"])
    op.create_index("ix_documents_run_status", "documents", ["run_id", "status"])
    op.drop_index("ix_documents_status", "documents")
    op.drop_index("ix_documents_run_id", "documents")


def downgrade() -> None:
    op.create_index("ix_documents_run_id", "documents", ["run_id"])
    op.create_index("ix_documents_status", "documents", ["status"])
    op.drop_index("ix_documents_run_status", "documents")
    op.drop_index("ix_documents_status_received", "documents")
