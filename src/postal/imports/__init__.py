"""The CSV import of posts: reading the file (`csv_rows`, over `csv_fields`, `csv_scan` and
`id_set`: bytes in, checked rows and line-numbered errors out, no I/O)."""
