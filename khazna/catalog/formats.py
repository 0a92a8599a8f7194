"""Media types and the format label shown in search facets, from a file's name."""

from __future__ import annotations

import mimetypes
from pathlib import PurePosixPath

# Extension -> (media type, format label). Checked before the platform's mimetypes.
_KNOWN: dict[str, tuple[str, str]] = {
    ".csv": ("text/csv", "CSV"),
    ".tsv": ("text/tab-separated-values", "TSV"),
    ".txt": ("text/plain", "TXT"),
    ".json": ("application/json", "JSON"),
    ".geojson": ("application/geo+json", "GeoJSON"),
    ".ndjson": ("application/x-ndjson", "NDJSON"),
    ".jsonl": ("application/x-ndjson", "NDJSON"),
    ".parquet": ("application/vnd.apache.parquet", "Parquet"),
    ".xlsx": (
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "XLSX",
    ),
    ".xls": ("application/vnd.ms-excel", "XLS"),
    ".tif": ("image/tiff", "GeoTIFF"),
    ".tiff": ("image/tiff", "GeoTIFF"),
    ".dcm": ("application/dicom", "DICOM"),
    ".zip": ("application/zip", "ZIP"),
    ".pdf": ("application/pdf", "PDF"),
    ".xml": ("application/xml", "XML"),
    ".ttl": ("text/turtle", "Turtle"),
    ".md": ("text/markdown", "Markdown"),
}
# Compound suffixes that say more than the last extension.
_COMPOUND: dict[str, tuple[str, str]] = {
    ".stac.json": ("application/geo+json", "STAC"),
}


def describe(file_name: str) -> tuple[str, str]:
    """(media type, format label) for a file name."""
    lower = file_name.lower()
    for suffix, known in _COMPOUND.items():
        if lower.endswith(suffix):
            return known
    ext = PurePosixPath(lower).suffix
    if ext in _KNOWN:
        return _KNOWN[ext]
    guessed, _ = mimetypes.guess_type(lower)
    label = ext.lstrip(".").upper() or "BIN"
    return guessed or "application/octet-stream", label


def media_type(file_name: str) -> str:
    return describe(file_name)[0]


def format_label(file_name: str) -> str:
    return describe(file_name)[1]
