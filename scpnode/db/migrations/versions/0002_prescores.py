"""prescores: slices scored while their study arrives

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "prescores",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("instance_id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("weights_sha256", sa.String(length=64), nullable=False),
        sa.Column("probability", sa.Float(), nullable=False),
        sa.Column("measure", sa.Float(), nullable=True),
        sa.Column("position", sa.Float(), nullable=True),
        sa.Column("instance_number", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["instance_id"], ["instances.id"]),
        sa.ForeignKeyConstraint(["study_id"], ["studies.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("instance_id", "weights_sha256"),
    )
    with op.batch_alter_table("prescores", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_prescores_instance_id"), ["instance_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_prescores_study_id"), ["study_id"], unique=False)
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.add_column(sa.Column("prescore_owner", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("prescore_until", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.drop_column("prescore_until")
        batch_op.drop_column("prescore_owner")
    with op.batch_alter_table("prescores", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_prescores_study_id"))
        batch_op.drop_index(batch_op.f("ix_prescores_instance_id"))
    op.drop_table("prescores")
