"""A JSON-lines file of STIX objects (one per line, appended): for a SOC's own tooling and for trying a
policy out. The Identity and markings open the file once per process."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from pipeline.share.destinations.base import DeliveryError, Share, ShareContext
from pipeline.share.destinations.stix_json import dumps, share_payload
from pipeline.share.policy import DestinationConfig


class FileDestination:
    def __init__(self, config: DestinationConfig, context: ShareContext) -> None:
        self.name = config.name
        self.path = Path(config.path)
        self.context = context
        self._context_sent = False

    def payload(self, share: Share) -> str:
        return share_payload(share)

    def send(self, shares: Sequence[Share]) -> None:
        lines = (
            []
            if self._context_sent
            else [dumps(self.context.identity), *map(dumps, self.context.markings.values())]
        )
        lines += [self.payload(s) for s in shares]
        try:
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write("\n".join(lines) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            raise DeliveryError(f"{self.name}: cannot write {self.path}: {exc}") from None
        self._context_sent = True

    def close(self) -> None:
        pass
