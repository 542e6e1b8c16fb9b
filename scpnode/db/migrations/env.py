"""Alembic environment: runs against the connection `Database.upgrade` hands over."""

from alembic import context
from sqlalchemy import create_engine

from scpnode.db.models import Base

target_metadata = Base.metadata
connection = context.config.attributes.get("connection")

if connection is None:  # `alembic` CLI use during development
    engine = create_engine(str(context.config.get_main_option("sqlalchemy.url")))
    with engine.begin() as connection:
        context.configure(
            connection=connection, target_metadata=target_metadata, render_as_batch=True
        )
        with context.begin_transaction():
            context.run_migrations()
else:
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
