from prometheus_client import CollectorRegistry

from pipeline.collector.metrics import CollectorMetrics


class Snap:
    def __init__(self, data):
        self.data = data

    def snapshot(self):
        return self.data


class Dec:
    def __init__(self, data):
        self.stats = Snap(data)


def test_decoder_snapshot_exported_with_exporters_folded_into_other():
    reg = CollectorRegistry()
    m = CollectorMetrics(reg, max_exporters=2)
    snapshot = {
        "packets": {(f"192.0.2.{i}", 9): 10 for i in range(1, 6)},
        "errors": {("192.0.2.1", "short"): 1, ("192.0.2.9", "bad_version"): 4, ("192.0.2.8", "short"): 2},
        "templates_active": {("192.0.2.1",): 3, ("192.0.2.7",): 5},
        "sequence_gaps": {("192.0.2.2", 4): 7},
        "something_new": {("192.0.2.1", "x"): 2},
    }
    m.attach([], [], Dec(snapshot), None)
    m.refresh()
    get = reg.get_sample_value
    assert get("shoal_decoder_packets_total", {"exporter": "192.0.2.1", "version": "9"}) == 10
    assert get("shoal_decoder_packets_total", {"exporter": "192.0.2.2", "version": "9"}) == 10
    assert get("shoal_decoder_packets_total", {"exporter": "other", "version": "9"}) == 30
    assert get("shoal_decoder_errors_total", {"exporter": "other", "reason": "short"}) == 2
    assert get("shoal_decoder_errors_total", {"exporter": "other", "reason": "bad_version"}) == 4
    assert get("shoal_decoder_templates_active", {"exporter": "other"}) == 5
    assert get("shoal_decoder_sequence_gaps_total", {"exporter": "192.0.2.2", "domain": "4"}) == 7
    # unknown keys are still exported rather than silently ignored
    assert get("shoal_decoder_something_new_total", {"exporter": "192.0.2.1", "label1": "x"}) == 2
    series = {
        s.labels.get("exporter")
        for fam in reg.collect()
        if fam.name.startswith("shoal_decoder")
        for s in fam.samples
    }
    assert series == {"192.0.2.1", "192.0.2.2", "other"}


def test_every_label_is_capped_not_only_the_exporter():
    """10k observation domains from one exporter (spoofed, or a misconfigured router): the domain
    label keeps its first values, the rest are folded into ``other``, totals kept."""
    reg = CollectorRegistry()
    m = CollectorMetrics(reg, max_exporters=4, max_label_values=8)
    snapshot = {
        "sequence_gaps": {("192.0.2.1", d): 1 for d in range(10_000)},
        "evictions": {"templates": 5, "streams": 2},
    }
    m.attach([], [], Dec(snapshot), None)
    m.refresh()
    samples = [s for fam in reg.collect() if fam.name == "shoal_decoder_sequence_gaps" for s in fam.samples]
    assert len(samples) == 9
    assert sum(s.value for s in samples) == 10_000
    assert (
        reg.get_sample_value(
            "shoal_decoder_sequence_gaps_total", {"exporter": "192.0.2.1", "domain": "other"}
        )
        == 9_992
    )
    assert reg.get_sample_value("shoal_decoder_evictions_total", {"state": "templates"}) == 5
