"""A naive IPFIX encoder and decoder written from RFC 7011 (§3 message and set headers, §3.4 template
records, §7 variable-length encoding), one byte string and one record at a time: the independent
reading the decoder's variable-length path is checked against (with tshark where it is installed).
Nothing here is shared with ``pipeline.decode``."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

VARIABLE = 65535
ADDRESS_IES = {8: "src_addr", 12: "dst_addr", 27: "src_addr", 28: "dst_addr"}
# IE -> flow column, for the unsigned fields the comparison covers (RFC 7012 names in comments).
UINT_IES = {
    7: "src_port",  # sourceTransportPort
    11: "dst_port",  # destinationTransportPort
    4: "protocol",  # protocolIdentifier
    6: "tcp_flags",  # tcpControlBits
    10: "input_if",  # ingressInterface
    14: "output_if",  # egressInterface
    1: "octets",  # octetDeltaCount
    2: "packets",  # packetDeltaCount
}


@dataclass(frozen=True)
class Field:
    ie: int
    length: int  # VARIABLE for a variable-length field
    enterprise: int = 0


def length_prefix(size: int, long_form: bool) -> bytes:
    """§7: one octet below 255; else (or by choice) 255 then the length in two octets."""
    if size < 255 and not long_form:
        return bytes([size])
    return b"\xff" + size.to_bytes(2, "big")


def encode_record(fields: list[Field], values: list[bytes], long_form: list[bool]) -> bytes:
    out = b""
    for f, value, long in zip(fields, values, long_form, strict=True):
        if f.length == VARIABLE:
            out += length_prefix(len(value), long) + value
        else:
            assert len(value) == f.length
            out += value
    return out


def template_set(template_id: int, fields: list[Field]) -> bytes:
    """§3.4.1: a Template Set (id 2) holding one template record."""
    body = template_id.to_bytes(2, "big") + len(fields).to_bytes(2, "big")
    for f in fields:
        if f.enterprise:
            body += (f.ie | 0x8000).to_bytes(2, "big") + f.length.to_bytes(2, "big")
            body += f.enterprise.to_bytes(4, "big")
        else:
            body += f.ie.to_bytes(2, "big") + f.length.to_bytes(2, "big")
    return (2).to_bytes(2, "big") + (4 + len(body)).to_bytes(2, "big") + body


def data_set(template_id: int, records: bytes, padding: int = 0) -> bytes:
    """§3.3.1: a Data Set; ``padding`` zero octets after the records (§3.3.1 allows it)."""
    body = records + bytes(padding)
    return template_id.to_bytes(2, "big") + (4 + len(body)).to_bytes(2, "big") + body


def message(sets: list[bytes], sequence: int, domain: int, export_time: int) -> bytes:
    """§3.1: the 16-octet header, then the sets; Length counts the whole message."""
    body = b"".join(sets)
    return (
        (10).to_bytes(2, "big")
        + (16 + len(body)).to_bytes(2, "big")
        + export_time.to_bytes(4, "big")
        + sequence.to_bytes(4, "big")
        + domain.to_bytes(4, "big")
        + body
    )


def decode(messages: list[bytes]) -> list[dict[int, bytes]]:
    """Every data record of ``messages`` as {IE: value octets} (enterprise IEs left out), in order:
    templates from Template Sets, then each Data Set's records read field by field until the next
    record does not fit (what remains is padding or a cut record)."""
    templates: dict[tuple[int, int], list[Field]] = {}
    records: list[dict[int, bytes]] = []
    for msg in messages:
        assert int.from_bytes(msg[0:2], "big") == 10
        domain = int.from_bytes(msg[12:16], "big")
        end = int.from_bytes(msg[2:4], "big")
        pos = 16
        while pos + 4 <= end:
            set_id = int.from_bytes(msg[pos : pos + 2], "big")
            set_end = pos + int.from_bytes(msg[pos + 2 : pos + 4], "big")
            body = msg[pos + 4 : set_end]
            pos = set_end
            if set_id == 2:
                tid, count = int.from_bytes(body[0:2], "big"), int.from_bytes(body[2:4], "big")
                fields, at = [], 4
                for _ in range(count):
                    ie, length = (
                        int.from_bytes(body[at : at + 2], "big"),
                        int.from_bytes(body[at + 2 : at + 4], "big"),
                    )
                    at += 4
                    pen = 0
                    if ie & 0x8000:
                        ie, pen = ie & 0x7FFF, int.from_bytes(body[at : at + 4], "big")
                        at += 4
                    fields.append(Field(ie, length, pen))
                templates[(domain, tid)] = fields
            elif set_id >= 256:
                records += _records(templates[(domain, set_id)], body)
    return records


def _records(fields: list[Field], body: bytes) -> list[dict[int, bytes]]:
    out, pos = [], 0
    while True:
        record, p = {}, pos
        for f in fields:
            size = f.length
            if size == VARIABLE:
                if p + 1 > len(body):
                    return out
                size, p = body[p], p + 1
                if size == 255:
                    if p + 2 > len(body):
                        return out
                    size, p = int.from_bytes(body[p : p + 2], "big"), p + 2
            if p + size > len(body):
                return out
            if not f.enterprise:
                record.setdefault(f.ie, body[p : p + size])
            p += size
        out.append(record)
        pos = p


def flow_of(record: dict[int, bytes]) -> dict:
    """The flow columns a record gives (the subset the comparison covers)."""
    flow: dict = {}
    for ie, name in ADDRESS_IES.items():
        if ie in record and len(record[ie]) in (4, 16):
            flow.setdefault(name, ipaddress.ip_address(record[ie]))
    for ie, name in UINT_IES.items():
        if ie in record:
            flow[name] = int.from_bytes(record[ie], "big")
    return flow
