"""TAXII 2.1 collections through taxii2-client, following ``added_after`` pages."""

from __future__ import annotations

import os
from datetime import datetime

from pipeline.intel.load import IntelError, IntelLoad
from pipeline.intel.stix import from_objects


def load_taxii(
    url: str, added_after: str | None = None, min_confidence: int = 0, now: datetime | None = None
) -> IntelLoad:
    """Every STIX object of the collection at ``url`` (credentials from SHOAL_TAXII_USER and
    SHOAL_TAXII_PASSWORD, never the command line)."""
    from taxii2client.exceptions import TAXIIServiceException
    from taxii2client.v21 import Collection, as_pages

    user, password = os.environ.get("SHOAL_TAXII_USER"), os.environ.get("SHOAL_TAXII_PASSWORD")
    objects: list = []
    try:
        collection = Collection(url, user=user, password=password)
        kwargs = {"added_after": added_after} if added_after else {}
        for envelope in as_pages(collection.get_objects, per_request=500, **kwargs):
            objects += envelope.get("objects", [])
    except (TAXIIServiceException, OSError, ValueError) as exc:
        raise IntelError(f"{url}: {exc}") from exc
    load = from_objects(objects, default_source=url, min_confidence=min_confidence, now=now)
    load.source = url
    return load
