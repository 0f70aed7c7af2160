"""The one validated config: precedence, key-naming errors, masked secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from producer.config import load_config
from producer.errors import ConfigError


def test_precedence_default_file_env_flag(tmp_path: Path) -> None:
    f = tmp_path / "agent.toml"
    f.write_text('topic = "from-file"\npartitions = 3\nsample_rate = 4\n')
    cfg = load_config(f, {"HDRLOG_TOPIC": "from-env", "HDRLOG_PARTITIONS": "5"},
                      {"topic": "from-flag", "partitions": None})
    assert (cfg.topic, cfg.partitions, cfg.sample_rate, cfg.ringbuf_pages) == ("from-flag", 5, 4, 4096)


def test_interfaces_from_env_list() -> None:
    assert load_config(env={"HDRLOG_IFACE": "eth0, eth1"}).interfaces == ("eth0", "eth1")


@pytest.mark.parametrize(("text", "message"), [
    ("topik = 'x'\n", "unknown key in .*: topik"),
    ("ringbuf_pages = 1000\n", "invalid value for ringbuf_pages: 1000 is not a power of two"),
    ("partitions = 'many'\n", "invalid value for .*partitions: 'many'"),
    ("sample_rate = 0\n", "invalid value for sample_rate"),
    ("topic = \n", "not valid TOML"),
])
def test_bad_file_names_the_key(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "agent.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(f, {})


def test_bad_env_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="environment HDRLOG_DURATION"):
        load_config(env={"HDRLOG_DURATION": "soon"})


def test_secrets_are_masked(tmp_path: Path) -> None:
    f = tmp_path / "agent.toml"
    f.write_text('[kafka]\n"sasl.password" = "hunter2"\n"sasl.username" = "agent"\n'
                 '[registry]\n"basic.auth.user.info" = "u:p"\n')
    shown = load_config(f, {}).masked()
    assert shown["kafka"] == {"sasl.password": "***", "sasl.username": "agent"}
    assert shown["registry"] == {"basic.auth.user.info": "***"}
    assert "hunter2" not in repr(shown)
