"""Sharing confirmed detections back out: STIX 2.1 sightings and new indicators to Kafka, TAXII 2.1 and
MISP, under a sharing policy that keeps the network's own users out of everything that leaves.

The stages, each a module: ``policy`` (the TOML policy, validated at start), ``build`` (detections to
STIX objects with deterministic ids, aggregated per indicator and window), ``guard`` (the constituency
check of every serialised payload), ``decide`` (which destination may receive what, with a reason for
every refusal), ``destinations`` (one interface, one module per kind of receiver) and ``delivery`` (at
least once from the detections topic's committed offsets, per destination, with backoff).
"""
