"""Where the hub keeps its bytes, and under which jurisdiction: local disk or an S3 bucket.

``KHAZNA_STORAGE_URL`` names the place (unset: ``KHAZNA_HOME/blobs`` on local disk);
``KHAZNA_STORAGE_JURISDICTION`` says whose law it is under, for residency checks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

_JURISDICTION = re.compile(r"[A-Z]{2}")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]")


def check_jurisdiction(value: object, what: str) -> str:
    """An ISO 3166-1 alpha-2 country code such as MA, upper-cased."""
    text = value.strip().upper() if isinstance(value, str) else ""
    if not _JURISDICTION.fullmatch(text):
        raise ValueError(f"{what} must be a two-letter country code such as MA, got {value!r}")
    return text


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str  # "" or "some/prefix/" (always ends with "/")
    endpoint: str | None  # None: the AWS default endpoint for the region
    region: str

    def key(self, *parts: str) -> str:
        return self.prefix + "/".join(parts)

    def describe(self) -> str:
        """Bucket and prefix: no credentials (the URL never holds any), no endpoint (an
        address inside the operator's network)."""
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")


@dataclass(frozen=True)
class StorageLocation:
    kind: str  # "local" or "s3"
    jurisdiction: str | None
    s3: S3Location | None = None  # kind "s3"
    # Files sealed by the hub with the operator's key (KHAZNA_ENCRYPTION_KEY_FILE).
    encrypted: bool = False

    def describe(self) -> str:
        # Not the folder: where the hub keeps its files is none of a caller's business.
        return self.s3.describe() if self.s3 is not None else "local disk"

    def as_dict(self) -> dict[str, Any]:
        shown = {"kind": self.kind, "jurisdiction": self.jurisdiction, "location": self.describe()}
        # Only when true: a hub without a key answers exactly as before the option existed.
        return shown | {"encrypted": True} if self.encrypted else shown


def parse_s3_url(url: str) -> S3Location:
    """``s3://BUCKET[/PREFIX]?endpoint=http://host:port&region=...``; nothing secret in it."""
    parts = urlsplit(url)
    if parts.scheme != "s3":
        raise ValueError(f"KHAZNA_STORAGE_URL must start with s3://, got {url!r}")
    if parts.username or parts.password:
        raise ValueError(
            "KHAZNA_STORAGE_URL must not hold credentials: use AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY"
        )
    bucket = parts.netloc
    if not _BUCKET.fullmatch(bucket):
        raise ValueError(f"KHAZNA_STORAGE_URL names an invalid bucket {bucket!r}")
    prefix = parts.path.strip("/")
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    unknown = set(query) - {"endpoint", "region"}
    if unknown:
        raise ValueError(
            f"KHAZNA_STORAGE_URL: unknown parameter {', '.join(sorted(unknown))}; "
            "known: endpoint, region"
        )
    endpoint = query.get("endpoint")
    if endpoint is not None and urlsplit(endpoint).scheme not in ("http", "https"):
        raise ValueError(f"KHAZNA_STORAGE_URL: endpoint must be an http(s) URL, got {endpoint!r}")
    return S3Location(
        bucket=bucket,
        prefix=f"{prefix}/" if prefix else "",
        endpoint=endpoint.rstrip("/") if endpoint else None,
        region=query.get("region") or "us-east-1",
    )
