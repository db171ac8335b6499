"""``shoal decode``: export packets captured in pcap/pcapng files -> one Parquet file of flows.

For looking at what a router really sends (tcpdump on the collector, then decode), for tests and for
the demo. The same :class:`FlowDecoder` as the live collector, fed in the same batches, with the
capture time as the receive time.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path
from typing import Any

HELP = """\
Decode NetFlow v5/v9 and IPFIX packets from capture files (pcap or pcapng, e.g. from
`tcpdump -w export.pcap udp port 2055`) into a Parquet file in the flow schema. Files are read in
order with one template cache, so templates seen in an earlier file decode data in a later one.
Packets the decoder rejects are counted by reason on stderr; they never stop the run.
"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("decode", help="decode captured export packets into Parquet", description=HELP,
                              formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("captures", nargs="+", type=Path, metavar="PCAP", help="pcap or pcapng file(s)")
    p.add_argument("--parquet", required=True, type=Path, metavar="OUT", help="Parquet file to write")
    p.add_argument("--port", action="append", type=int, default=[], metavar="N",
                   help="only UDP datagrams to this destination port (repeatable; default: all UDP)")  # fmt: skip
    p.add_argument("--no-port-key", action="store_true",
                   help="key templates without the exporter's source port (Juniper MX)")  # fmt: skip
    p.add_argument("--state", type=Path, metavar="FILE",
                   help="template/sampling state to load first (if present) and save at the end")  # fmt: skip
    p.add_argument("--batch", type=int, default=512, metavar="N", help="datagrams per decode call")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import pyarrow.parquet as pq

    from pipeline.decode import DecoderConfig, FlowDecoder
    from pipeline.decode.capture import CaptureStats, read_datagrams
    from pipeline.schemas import FLOW_SCHEMA

    decoder = FlowDecoder(DecoderConfig(template_key_includes_port=not args.no_port_key))
    if args.state is not None and args.state.exists():
        try:
            decoder.load_state(args.state)
        except (OSError, ValueError) as exc:
            print(f"shoal decode: cannot restore templates from {args.state}: {exc}", file=sys.stderr)
            return 2
    ports = frozenset(args.port) if args.port else None
    capture = CaptureStats()
    rows = 0
    failed = 0
    args.parquet.parent.mkdir(parents=True, exist_ok=True)
    with pq.ParquetWriter(args.parquet, FLOW_SCHEMA, compression="zstd") as writer:
        for path in args.captures:
            try:
                chunk = []
                for datagram in read_datagrams(path, ports, capture):
                    chunk.append(datagram)
                    if len(chunk) >= max(1, args.batch):
                        rows += _write(writer, decoder.decode(chunk))
                        chunk = []
                rows += _write(writer, decoder.decode(chunk))
            except (OSError, ValueError) as exc:  # unreadable or not a capture (dpkt raises ValueError)
                print(f"shoal decode: {path}: {exc}", file=sys.stderr)
                failed += 1
    if args.state is not None:
        decoder.save_state(args.state)
    _summary(decoder.stats.snapshot(), capture, rows, args.parquet)
    return 1 if failed else 0


def _write(writer: Any, batch: Any) -> int:
    if batch.num_rows:
        writer.write_batch(batch)
    return batch.num_rows


def _summary(snap: dict[str, dict], capture: Any, rows: int, out: Path) -> None:
    versions = Counter[int]()
    for (_, version), n in snap["packets"].items():
        versions[version] += n
    per_version = ", ".join(f"v{v}: {n}" for v, n in sorted(versions.items())) or "none"
    print(f"shoal decode: {capture.frames} frames, {capture.datagrams} datagrams ({per_version}), "
          f"{rows} flows -> {out}", file=sys.stderr)  # fmt: skip
    reasons = Counter[str]()
    for (_, reason), n in snap["errors"].items():
        reasons[reason] += n
    for reason, n in sorted(reasons.items()):
        print(f"  rejected {reason}: {n}", file=sys.stderr)
    for reason, n in sorted(capture.skipped.items()):
        print(f"  frames skipped ({reason}): {n}", file=sys.stderr)
    waiting = sum(snap["pending_buffered"].values()) - sum(snap["pending_decoded"].values())
    waiting -= sum(snap["pending_expired"].values())
    if waiting > 0:
        print(f"  data sets still waiting for their template: {waiting}", file=sys.stderr)
    gaps = sum(snap["sequence_gaps"].values())
    if gaps:
        print(f"  sequence gaps: {gaps} lost (packets for v9, records for IPFIX)", file=sys.stderr)
