"""A TAXII 2.1 collection (taxii2-client): shares posted as envelopes, each status resource followed
to completion, only what failed retried.

Idempotence: a TAXII server keeps every version of an object, and one that already holds an id at
that ``modified`` reports the re-sent object as a failure (medallion does). A failure is therefore
checked against the collection: if it holds that exact version, the object was delivered (by an
earlier attempt whose answer was lost, or before a restart) and nothing is retried.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Any

import requests
from taxii2client.common import _HTTPConnection
from taxii2client.exceptions import TAXIIServiceException
from taxii2client.v21 import Collection

from pipeline.share.destinations.base import DeliveryError, Share, ShareContext
from pipeline.share.destinations.stix_json import dumps
from pipeline.share.policy import DestinationConfig

POLL_SECONDS = 0.5
ERRORS = (requests.RequestException, TAXIIServiceException, ValueError, KeyError)


def _envelope(objects: list[dict[str, Any]]) -> str:
    return dumps({"objects": objects})


class TaxiiDestination:
    def __init__(self, config: DestinationConfig, context: ShareContext) -> None:
        self.name = config.name
        self.url = config.url
        self.context = context
        self.timeout = config.timeout_seconds
        user = os.environ.get(config.user_env) if config.user_env else None
        password = os.environ.get(config.secret_env) if config.secret_env else None
        if (config.user_env and user is None) or (config.secret_env and password is None):
            missing = [v for v in (config.user_env, config.secret_env) if v and v not in os.environ]
            raise ValueError(f"environment variable(s) {', '.join(missing)} not set")
        verify: bool | str = config.ca_file or config.verify_tls
        conn = _HTTPConnection(user=user, password=password, verify=verify, version="2.1")
        # taxii2-client sets no timeout: a server that stops answering must fail the attempt, not hang it.
        conn.session.request = functools.partial(conn.session.request, timeout=self.timeout)  # type: ignore[method-assign]
        self.collection = Collection(config.url, conn=conn)
        self._context_sent = False

    def payload(self, share: Share) -> str:
        return _envelope(list(share.objects))

    def send(self, shares: Sequence[Share]) -> None:
        context = [] if self._context_sent else [self.context.identity, *self.context.markings.values()]
        objects = context + [o for s in shares for o in s.objects]
        owner = {o["id"]: s.id for s in shares for o in s.objects}
        try:
            status = self.collection.add_objects(
                _envelope(objects), wait_for_completion=True, poll_interval=POLL_SECONDS, timeout=self.timeout
            )
            if status.status != "complete":
                raise DeliveryError(
                    f"{self.name}: status {status.id} still {status.status} after {self.timeout:g}s"
                )
            failed = {f["id"]: f.get("version") for f in status.failures or ()}
            missing = {oid for oid, version in failed.items() if not self._holds(oid, version)}
        except ERRORS as exc:
            raise DeliveryError(f"{self.name}: {type(exc).__name__}: {str(exc)[:300]}") from None
        if missing:
            shares_failed = {owner[oid] for oid in missing if oid in owner}
            context_failed = any(oid not in owner for oid in missing)
            raise DeliveryError(
                f"{self.name}: the server refused {len(missing)} object(s), e.g. {sorted(missing)[0]}",
                None if context_failed else shares_failed,
            )
        self._context_sent = True

    def _holds(self, object_id: str, version: str | None) -> bool:
        """The collection has ``object_id`` at ``version`` (any version when the status names none)."""
        try:
            answer = self.collection.get_object(object_id, version=version or "all")
        except TAXIIServiceException:
            return False
        return any(o.get("id") == object_id for o in answer.get("objects") or ())

    def close(self) -> None:
        self.collection.close()


def read_back(collection: Collection) -> list[dict[str, Any]]:
    """Every object version of a collection, following pages (for tests and operators' checks)."""
    from taxii2client.v21 import as_pages

    out: list[dict[str, Any]] = []
    for page in as_pages(collection.get_objects, per_request=100, version="all"):
        out += page.get("objects") or []
    return out
