"""AS and country from MaxMind-format databases (GeoLite2/GeoIP2 ASN, Country or City, or any mmdb
with the same keys). Looked up once per distinct address of a batch, never per flow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import maxminddb
import numpy as np
import pyarrow as pa

from pipeline.schemas import bytes16_to_ip


class GeoIP:
    def __init__(self, paths: list[Path]) -> None:
        self.readers = [maxminddb.open_database(str(p)) for p in paths]

    def record(self, address: str) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for reader in self.readers:
            found = reader.get(address)
            if isinstance(found, dict):
                merged.update(found)
        return merged

    def asn_and_country(
        self, raw16: list[bytes]
    ) -> tuple[list[int | None], list[str | None], list[str | None]]:
        cache: dict[bytes, tuple] = {}
        for raw in set(raw16):
            rec = self.record(str(bytes16_to_ip(raw)))
            country = (rec.get("country") or rec.get("registered_country") or {}).get("iso_code")
            cache[raw] = (
                rec.get("autonomous_system_number"),
                rec.get("autonomous_system_organization"),
                country,
            )
        rows = [cache[r] for r in raw16]
        return [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]

    def fill_asn(self, keys16: np.ndarray, asns: np.ndarray) -> np.ndarray:
        """AS numbers for rows whose flow carried none (0, or -1 for a null)."""
        missing = np.nonzero(asns <= 0)[0]
        if not len(missing):
            return asns
        unique, inverse = np.unique(keys16[missing], return_inverse=True)
        found = np.array([self.record(str(bytes16_to_ip(k.ljust(16, b"\0")))).get("autonomous_system_number") or 0
                          for k in unique], dtype=np.int64)  # fmt: skip
        out = asns.copy()
        out[missing] = found[inverse]
        return out

    def enrich(self, alerts: pa.Table) -> pa.Table:
        """Add the remote (matched) address's AS, AS organisation and country to alert rows."""
        sides = alerts.column("side").to_pylist()
        src, dst = alerts.column("src_addr").to_pylist(), alerts.column("dst_addr").to_pylist()
        remote = [s if side == "src" else d for side, s, d in zip(sides, src, dst, strict=True)]
        asn, org, country = self.asn_and_country(remote)
        alerts = alerts.append_column("remote_as", pa.array(asn, type=pa.int64()))
        alerts = alerts.append_column("remote_as_org", pa.array(org, type=pa.string()))
        return alerts.append_column("remote_country", pa.array(country, type=pa.string()))
