"""The confirmation stage: partial aggregates from the matcher workers merged into detections,
confirmed by rules or analysts (``detectors.detections``), in process (``shoal run``) or as a Faust
app over Kafka (``shoal confirm``)."""
