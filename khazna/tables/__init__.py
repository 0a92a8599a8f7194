"""Tables: uploaded files as typed Parquet, queried with DuckDB."""
