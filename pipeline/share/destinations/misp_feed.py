"""A MISP feed directory (``manifest.json``, ``hashes.csv``, one ``<event uuid>.json`` per event, as
PyMISP's feed export writes them) that any MISP instance can pull as a feed of type "MISP Feed".

It holds the scanners found here, one event per window (the same events and attribute uuids as the
MISP destination). The directory is its own state: what it holds is read back at start, so a restart
or a re-send rewrites the same files. Every file is replaced atomically (written beside it, then
renamed), event files first and the manifest last: a MISP pulling meanwhile reads either the old feed
or the new one, each file whole. Events whose every indicator has expired leave the feed.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pymisp import MISPEvent

from pipeline.share.destinations.base import DeliveryError, Share, ShareContext
from pipeline.share.destinations.misp import ScannerEvents
from pipeline.share.policy import DestinationConfig

log = logging.getLogger("shoal.share")


def _write_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class MispFeedDestination:
    def __init__(self, config: DestinationConfig, context: ShareContext) -> None:
        self.name = config.name
        self.path = Path(config.path)
        self.builder = ScannerEvents(config, context)
        self.path.mkdir(parents=True, exist_ok=True)
        self.events: dict[str, MISPEvent] = {}
        for uuid in self._manifest():
            try:
                event = MISPEvent()
                event.load_file(str(self.path / f"{uuid}.json"))
                self.events[uuid] = event
            except (OSError, ValueError, KeyError) as exc:
                log.warning(
                    "%s: event %s of %s not readable (%s); it will be rebuilt",
                    self.name,
                    uuid,
                    self.path,
                    exc,
                )

    def _manifest(self) -> dict[str, Any]:
        try:
            manifest = json.loads((self.path / "manifest.json").read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise ValueError(
                f"{self.path}/manifest.json is not readable ({exc}): move it away or fix it"
            ) from exc
        return manifest if isinstance(manifest, dict) else {}

    def payload(self, share: Share) -> str:
        return json.dumps(self.builder.event([share]).to_feed(with_meta=True), default=str)

    def send(self, shares: Sequence[Share]) -> None:
        changed: set[str] = set()
        for share in shares:
            if share.kind != "indicator":
                continue  # a feed holds events: the policy routes only new indicators here
            uuid = self.builder.event_uuid(share)
            if uuid not in self.events:
                self.events[uuid] = self.builder.event([share])
            else:
                self.builder.add(self.events[uuid], share)
                for tag in {f"tlp:{share.tlp}"} - {t.name for t in self.events[uuid].tags}:
                    self.events[uuid].add_tag(tag)
            changed.add(uuid)
        try:
            self._write(changed)
        except OSError as exc:
            raise DeliveryError(f"{self.name}: cannot write the feed in {self.path}: {exc}") from None

    def _expired(self, event: MISPEvent, now: datetime) -> bool:
        ends = [a.last_seen for a in event.attributes if getattr(a, "last_seen", None)]
        return bool(ends) and all(end < now for end in ends)

    def _write(self, changed: set[str]) -> None:
        now = datetime.now(UTC)
        gone = {u for u, e in self.events.items() if self._expired(e, now)}
        manifest, hashes = {}, []
        for uuid, event in sorted(self.events.items()):
            if uuid in gone:
                continue
            feed = event.to_feed(with_meta=True)
            manifest.update(feed["Event"].pop("_manifest"))
            hashes += [f"{h},{uuid}" for h in feed["Event"].pop("_hashes")]
            if uuid in changed:
                _write_atomically(self.path / f"{uuid}.json", json.dumps(feed, indent=1, default=str) + "\n")
        _write_atomically(self.path / "hashes.csv", "".join(f"{line}\n" for line in hashes))
        _write_atomically(self.path / "manifest.json", json.dumps(manifest, indent=1, default=str) + "\n")
        for uuid in gone:
            del self.events[uuid]
            (self.path / f"{uuid}.json").unlink(missing_ok=True)

    def close(self) -> None:
        pass
