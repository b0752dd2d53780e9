"""Alembic migrations, shipped inside the package so an installed Postal can migrate itself.

Run them through `postal.storage.migrate` (no alembic.ini needed); `env.py` also works from the
`alembic` command line, with the database in DATABASE_URL.
"""
