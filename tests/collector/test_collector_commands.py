"""Issue 15, items 6, 16 and 18 at the command line: a clear message and exit status instead of a
traceback, failing at start when a sink cannot work, and ``shoal run --allow-exporter``."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def shoal(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})}, check=False)  # fmt: skip


def clean_failure(res: subprocess.CompletedProcess, status: int, *words: str) -> None:
    assert "Traceback" not in res.stderr, res.stderr[-2000:]
    assert res.returncode == status, res.stdout + res.stderr
    for word in words:
        assert word in res.stderr, res.stderr[-2000:]
    assert "listening on" not in res.stdout


def test_collect_metrics_port_in_use_is_a_message(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = shoal(
            "collect", "--listen", "127.0.0.1:0", "--parquet", str(tmp_path), "--metrics", f"127.0.0.1:{port}"
        )
    clean_failure(res, 1, f"cannot serve metrics on 127.0.0.1:{port}")


def test_run_metrics_port_in_use_is_a_message(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = shoal("run", "--listen", "127.0.0.1:0", "--alerts", str(tmp_path / "a.jsonl"),
                    "--metrics", f"127.0.0.1:{port}", "--duration", "1")  # fmt: skip
    clean_failure(res, 1, f"cannot serve metrics on 127.0.0.1:{port}")


def test_unknown_or_bad_decoder_settings_are_messages(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[decoder]\nbogus = 1\n")
    res = shoal("collect", "--listen", "127.0.0.1:0", "--parquet", str(tmp_path), "--config", str(config))
    clean_failure(res, 2, "unknown setting decoder.'bogus'")
    res = shoal("collect", "--listen", "127.0.0.1:0", "--parquet", str(tmp_path),
                env={"SHOAL_COLLECT__DECODER__MAX_TEMPLATES_PER_EXPORTER": "-1"})  # fmt: skip
    clean_failure(res, 2, "max_templates_per_exporter")
    res = shoal("run", "--listen", "127.0.0.1:0", "--alerts", str(tmp_path / "a.jsonl"), "--duration", "1",
                env={"SHOAL_COLLECT__DECODER__PENDING_TTL_SECONDS": "soon"})  # fmt: skip
    clean_failure(res, 2, "decoder.pending_ttl_seconds")


def test_collect_fails_at_start_when_parquet_cannot_be_written(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    res = shoal("collect", "--listen", "127.0.0.1:0", "--parquet", str(blocker / "flows"))
    clean_failure(res, 1, "sink cannot work", str(blocker / "flows"))


def test_bad_allowlist_files_are_messages(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.txt"
    garbage.write_text("hello\nworld\n")
    binary = tmp_path / "binary.json"
    binary.write_bytes(bytes(range(256)))
    not_a_list = tmp_path / "list.json"
    not_a_list.write_text('{"name": "x", "list": 5}')
    for path, why in ((garbage, "no network in it"), (binary, str(binary)), (not_a_list, str(not_a_list))):
        res = shoal("run", "--listen", "127.0.0.1:0", "--alerts", str(tmp_path / "a.jsonl"), "--duration", "1",
                    "--metrics", "", "--allowlist", str(path))  # fmt: skip
        assert "Traceback" not in res.stderr, res.stderr[-2000:]
        assert res.returncode != 0 and why in res.stderr and "allowlist" in res.stderr


def test_run_allow_exporter_drops_others(tmp_path: Path) -> None:
    """The bundled demo traffic comes from 127.0.0.1: allowed, it alerts; outside the allowed
    networks, it is dropped (and counted) before decoding."""
    common = ["run", "--demo", "--quiet", "--listen", "127.0.0.1:0", "--listen", "127.0.0.1:0",
              "--metrics", "", "--duration", "3"]  # fmt: skip
    allowed = shoal(*common, "--alerts", str(tmp_path / "a.jsonl"), "--allow-exporter", "127.0.0.0/8")
    assert allowed.returncode == 0, allowed.stderr[-2000:]
    assert (tmp_path / "a.jsonl").read_text().strip()
    refused = shoal(*common, "--alerts", str(tmp_path / "b.jsonl"), "--allow-exporter", "10.0.0.0/8")
    assert refused.returncode == 0, refused.stderr[-2000:]
    assert "0 flows matched, 0 alerts" in refused.stdout
