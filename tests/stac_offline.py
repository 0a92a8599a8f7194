"""Run stac-api-validator with no network: ``python -m tests.stac_offline ARGS...``.

stac-validator fetches JSON schemas from the web. Here the STAC 1.1.0 core schemas and the
GeoJSON schemas come from the copies pystac ships (the official files), and the JSON
Schema meta-schemas from jsonschema-specifications. No copy of the extension schemas
(eo, projection) exists offline: they are replaced by an empty schema, so their fields
are checked by tests/test_stac.py instead. Anything else would be fetched as usual.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pystac.validation
import requests
from jsonschema_specifications import REGISTRY

SCHEMAS = Path(pystac.validation.__file__).parent / "jsonschemas"
_real_get = requests.get


class _Local:
    def __init__(self, body: Any) -> None:
        self.body = body
        self.status_code = 200
        self.text = json.dumps(body)

    def json(self) -> Any:
        return self.body

    def raise_for_status(self) -> None:
        return None


def _local(url: str) -> Any | None:
    url = url.split("#", 1)[0]
    if url.startswith("https://schemas.stacspec.org/v1.1.0/"):
        return json.loads((SCHEMAS / "stac-spec" / "v1.1.0" / url.rsplit("/", 1)[-1]).read_text())
    if url.startswith("https://geojson.org/schema/"):
        return json.loads((SCHEMAS / "geojson" / url.rsplit("/", 1)[-1]).read_text())
    if url.startswith("https://stac-extensions.github.io/"):
        return {}
    if url.startswith("http://json-schema.org/"):
        return REGISTRY.contents(url.rstrip("#"))
    return None


def _get(url: str, *args: Any, **kwargs: Any) -> Any:
    body = _local(str(url))
    return _Local(body) if body is not None else _real_get(url, *args, **kwargs)


def main() -> None:
    requests.get = _get  # type: ignore[assignment]
    from stac_api_validator.__main__ import main as validator

    validator(sys.argv[1:])  # click exits with the validator's status


if __name__ == "__main__":
    main()
