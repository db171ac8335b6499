"""The Information Elements Shoal maps into the flow schema (IANA IPFIX registry; v9 shares ids < 128).

Where routers disagree on which IE carries a value, each schema column lists its sources in order of
preference: the first one present in a template wins.
"""

from __future__ import annotations

# schema column -> IEs that can fill it, preferred first
UINT_COLUMNS: dict[str, tuple[int, ...]] = {
    "src_port": (7, 180, 182),  # sourceTransportPort, udp/tcpSourcePort
    "dst_port": (11, 181, 183),
    "protocol": (4,),
    "tcp_flags": (6,),
    "tos": (5,),
    "input_if": (10, 252),  # ingressInterface, else ingressPhysicalInterface (akvorado #1621)
    "output_if": (14, 253),
    "src_as": (16,),
    "dst_as": (17,),
    "src_mask": (9, 29),
    "dst_mask": (13, 30),
}
# Counters: delta first, then totals (Juniper SRX), then Cisco ASA NSEL initiator+responder sums.
OCTETS = ((1,), (85,), (231, 232))
PACKETS = ((2,), (86,), (298, 299))

SRC_V4, DST_V4, NEXT_HOP_V4, BGP_NEXT_HOP_V4 = 8, 12, 15, 18
SRC_V6, DST_V6, NEXT_HOP_V6, BGP_NEXT_HOP_V6 = 27, 28, 62, 63
IP_VERSION = 60
# ICMP type/code: packed (type*256+code, IE 32 v4 / 139 v6) or separate (176/177 v4, 178/179 v6).
# They fill dst_port where the exporter sent no port, as nfdump and most collectors do.
ICMP_TYPE_CODE = (32, 139)
ICMP_TYPE_AND_CODE = ((176, 177), (178, 179))
ADDRESS_IES = frozenset(
    (SRC_V4, DST_V4, NEXT_HOP_V4, BGP_NEXT_HOP_V4, SRC_V6, DST_V6, NEXT_HOP_V6, BGP_NEXT_HOP_V6)
)

# Times
LAST_SWITCHED, FIRST_SWITCHED = 21, 22  # ms of sysUptime
START_SECONDS, END_SECONDS = 150, 151
START_MILLIS, END_MILLIS = 152, 153
START_MICROS, END_MICROS = 154, 155  # NTP format
START_NANOS, END_NANOS = 156, 157  # NTP format
START_DELTA_US, END_DELTA_US = 158, 159  # microseconds before export time
SYSTEM_INIT_MS = 160
DURATION_MS, DURATION_US = 161, 162

# Sampling (options data or data records)
SAMPLING_INTERVAL = 34
SAMPLER_ID = 48
SAMPLER_RANDOM_INTERVAL = 50
SELECTOR_ID = 302
SAMPLING_PACKET_INTERVAL = 305
SAMPLING_PACKET_SPACE = 306

TIME_IES = (
    LAST_SWITCHED,
    FIRST_SWITCHED,
    START_SECONDS,
    END_SECONDS,
    START_MILLIS,
    END_MILLIS,
    START_MICROS,
    END_MICROS,
    START_NANOS,
    END_NANOS,
    START_DELTA_US,
    END_DELTA_US,
    SYSTEM_INIT_MS,
    DURATION_MS,
    DURATION_US,
)
SAMPLING_IES = (
    SAMPLING_INTERVAL,
    SAMPLER_ID,
    SAMPLER_RANDOM_INTERVAL,
    SELECTOR_ID,
    SAMPLING_PACKET_INTERVAL,
    SAMPLING_PACKET_SPACE,
)

MAPPED_IES: frozenset[int] = frozenset(
    [ie for ies in UINT_COLUMNS.values() for ie in ies]
    + [ie for group in OCTETS + PACKETS for ie in group]
    + [SRC_V4, DST_V4, NEXT_HOP_V4, BGP_NEXT_HOP_V4, SRC_V6, DST_V6, NEXT_HOP_V6, BGP_NEXT_HOP_V6, IP_VERSION]
    + list(ICMP_TYPE_CODE)
    + [ie for pair in ICMP_TYPE_AND_CODE for ie in pair]
    + list(TIME_IES)
    + list(SAMPLING_IES)
)
