"""The CSV import of posts, a use case of its own beside `posts`' service.

- reading the file: `csv_rows` (over `csv_fields`, `csv_scan` and `id_set`): bytes in, checked
  rows and line-numbered errors out, no I/O;
- `importer.PostImporter`: batches, one transaction, all or nothing (or skip the bad rows), the
  report; `cache_step`: the touched posts' keys invalidated (or warmed) after the commit.
"""
