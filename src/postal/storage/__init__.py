"""Where posts are kept: SQL through SQLAlchemy Core, on PostgreSQL or an embedded SQLite file.

    engine = create_engine(settings.database, pool_size=10, timeout=5.0)
    await upgrade(settings.database)          # or refuse to start: `await is_current(url)`
    repository = SqlPostRepository(engine)   # the service's PostRepository
    store = SqlImportStore(engine)            # the importer's ImportStore (units of work)
    ...
    await engine.dispose()

Only this package writes SQL; the rest of Postal sees the Protocols of the use cases
(`posts.ports`) and the domain types.
"""

from postal.storage.db import create_engine, database_errors
from postal.storage.import_store import SqlImportStore
from postal.storage.migrate import downgrade, is_current, pending_revision, upgrade
from postal.storage.repository import SqlPostRepository

__all__ = [
    "SqlImportStore",
    "SqlPostRepository",
    "create_engine",
    "database_errors",
    "downgrade",
    "is_current",
    "pending_revision",
    "upgrade",
]
