"""The routes behind the API: reads as plain Starlette routes, writes and imports on FastAPI."""
