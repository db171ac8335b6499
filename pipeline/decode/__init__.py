"""NetFlow v5/v9 and IPFIX decoding into flow-schema Arrow record batches."""

from pipeline.decode.datagram import Datagram, DecoderConfig
from pipeline.decode.decoder import FlowDecoder
from pipeline.decode.stats import DecoderStats

__all__ = ["Datagram", "DecoderConfig", "DecoderStats", "FlowDecoder"]
