"""Alembic environment: migrations run on the connection handed in by ``storage.db.migrate``,
or on ``UNMARK_CATALOG_URL`` when run from the alembic command line."""

from alembic import context

from storage.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        from storage.db import catalog_url_from_env, make_engine  # only for the alembic CLI

        engine = make_engine(catalog_url_from_env())
        with engine.begin() as conn:
            _run(conn)
        return
    _run(connection)


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations_online()
