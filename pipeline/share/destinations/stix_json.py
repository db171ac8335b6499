"""The STIX JSON text of a share's objects, as every STIX-speaking destination sends it."""

from __future__ import annotations

import json
from typing import Any

from pipeline.share.destinations.base import Share


def dumps(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True)


def share_payload(share: Share) -> str:
    return "\n".join(dumps(o) for o in share.objects)
