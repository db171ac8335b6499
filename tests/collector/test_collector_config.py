from pathlib import Path

import pytest

from pipeline.collector.config import CollectorConfig, ConfigError, Endpoint, load_config
from pipeline.decode import DecoderConfig


def test_defaults_are_valid_and_sensible():
    cfg = load_config(environ={}, overrides={"receive": {"listen": ["0.0.0.0:2055"]}})
    assert cfg.receive.listen == ("0.0.0.0:2055",)
    assert cfg.receive.rcvbuf_bytes == 32 * 1024 * 1024
    assert cfg.receive.recv_batch == 256
    assert cfg.batch.max_rows == 65536 and cfg.batch.max_seconds == 1.0
    assert cfg.parquet.compression == "lz4"
    assert cfg.receive.allow_exporters == ()
    assert cfg.metrics.max_exporters == 64
    assert cfg.state_path() is None
    assert cfg.decoder == DecoderConfig()


def test_default_without_listener_is_rejected():
    with pytest.raises(ConfigError, match=r"receive\.listen"):
        CollectorConfig().validate()


def test_file_then_env_then_overrides(tmp_path: Path):
    f = tmp_path / "c.toml"
    f.write_text(
        """
[receive]
listen = ["127.0.0.1:2055", "[::1]:4739"]
allow_exporters = ["10.0.0.0/8"]
[batch]
max_rows = 1000
max_seconds = 0.5
[parquet]
dir = "/tmp/x"
[decoder]
template_ttl_seconds = 3600
"""
    )
    env = {
        "SHOAL_COLLECT__BATCH__MAX_ROWS": "2000",
        "SHOAL_COLLECT__RECEIVE__ALLOW_EXPORTERS": "192.0.2.0/24, ::1/128",
        "SHOAL_COLLECT__DECODER__MAX_TEMPLATES": "5000",
    }
    cfg = load_config(f, environ=env, overrides={"batch": {"max_seconds": 2}})
    assert cfg.receive.listen == ("127.0.0.1:2055", "[::1]:4739")
    assert cfg.receive.allow_exporters == ("192.0.2.0/24", "::1/128")
    assert cfg.batch.max_rows == 2000
    assert cfg.batch.max_seconds == 2.0
    assert cfg.decoder.template_ttl_seconds == 3600.0 and cfg.decoder.max_templates == 5000
    assert cfg.state_path() == Path("/tmp/x/.shoal/decoder-state")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"receive": {"listen": ["nohost"]}}, "HOST:PORT"),
        ({"receive": {"listen": ["example.org:2055"]}}, "IP address"),
        ({"receive": {"listen": ["1.2.3.4:70000"]}}, "port"),
        ({"receive": {"listen": ["1.2.3.4:1"], "allow_exporters": ["10/33"]}}, "CIDR"),
        ({"receive": {"listen": ["1.2.3.4:1"], "bogus": 1}}, "unknown setting"),
        ({"receive": {"listen": ["1.2.3.4:1"]}, "batch": {"max_rows": "many"}}, "expected int"),
        ({"receive": {"listen": ["1.2.3.4:1"]}, "batch": {"max_rows": 0}}, "max_rows"),
        ({"receive": {"listen": ["1.2.3.4:1"]}, "parquet": {"compression": "rar"}}, "compression"),
        ({"receive": {"listen": ["1.2.3.4:1"]}, "batch": 3}, "expected a table"),
        # issue 15, items 16 and 17: values that used to traceback later or silently break decoding
        (
            {"receive": {"listen": ["1.2.3.4:1"]}, "decoder": {"bogus": 1}},
            r"unknown setting decoder\.'bogus'",
        ),
        (
            {"receive": {"listen": ["1.2.3.4:1"]}, "decoder": {"max_templates_per_exporter": -1}},
            r"decoder: max_templates_per_exporter",
        ),
        (
            {"receive": {"listen": ["1.2.3.4:1"]}, "decoder": {"max_templates_per_exporter": [1]}},
            "expected int",
        ),
        (
            {"receive": {"listen": ["1.2.3.4:1"]}, "decoder": {"template_key_includes_port": "maybe"}},
            "boolean",
        ),
        ({"receive": {"listen": ["1.2.3.4:1"]}, "batch": {"max_rows": 1e10}}, "max_rows"),
        ({"receive": {"listen": ["1.2.3.4:1"]}, "metrics": {"max_label_values": 0}}, "max_label_values"),
    ],
)
def test_invalid_settings_name_the_key(data, message):
    with pytest.raises(ConfigError, match=message):
        load_config(environ={}, overrides=data)


def test_bad_toml_is_a_config_error(tmp_path: Path):
    f = tmp_path / "bad.toml"
    f.write_text("[receive\nlisten=")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(f, environ={})


def test_endpoint_parsing():
    assert Endpoint.parse("[::1]:4739") == Endpoint("::1", 4739)
    assert Endpoint.parse(":2055") == Endpoint("0.0.0.0", 2055)
    assert str(Endpoint.parse("[::]:9995")) == "[::]:9995"


def test_bad_decoder_value_from_the_environment_is_a_config_error():
    """``SHOAL_COLLECT__DECODER__...`` used to reach ``DecoderConfig`` unchecked (a traceback at
    start, or a decoder that refuses every template)."""
    with pytest.raises(ConfigError, match=r"decoder\.pending_ttl_seconds"):
        load_config(environ={"SHOAL_COLLECT__DECODER__PENDING_TTL_SECONDS": "soon"},
                    overrides={"receive": {"listen": ["1.2.3.4:1"]}})  # fmt: skip
    with pytest.raises(ConfigError, match="max_templates"):
        load_config(environ={"SHOAL_COLLECT__DECODER__MAX_TEMPLATES": "0"},
                    overrides={"receive": {"listen": ["1.2.3.4:1"]}})  # fmt: skip
