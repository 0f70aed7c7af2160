"""The one validated config tree: sections, precedence, key-naming errors, masked secrets, reload."""

from __future__ import annotations

from pathlib import Path

import pytest

from producer.config import AgentConfig, load_config, reloadable, settings
from producer.errors import ConfigError


def test_precedence_default_file_env_flag(tmp_path: Path) -> None:
    f = tmp_path / "agent.toml"
    f.write_text('[kafka]\ntopic = "from-file"\npartitions = 3\n[capture]\nsample_rate = 4\n')
    cfg = load_config(f, {"HDRLOG_TOPIC": "from-env", "HDRLOG_PARTITIONS": "5"},
                      {"kafka.topic": "from-flag", "kafka.partitions": None})
    assert (cfg.kafka.topic, cfg.kafka.partitions, cfg.capture.sample_rate, cfg.capture.ringbuf_pages) == (
        "from-flag", 5, 4, 4096)


def test_interfaces_from_env_list() -> None:
    assert load_config(env={"HDRLOG_IFACE": "eth0, eth1"}).capture.interfaces == ("eth0", "eth1")


@pytest.mark.parametrize(("text", "message"), [
    ("topik = 'x'\n", "unknown key in .*: topik$"),
    ("topic = 'x'\n", r"unknown key in .*: topic \(did you mean kafka.topic, in \[kafka\]\?\)"),
    ("[kafka]\ntopik = 'x'\n", "unknown key in .*: kafka.topik"),
    ("[capture]\nringbuf_pages = 1000\n", "invalid value for capture.ringbuf_pages: 1000 is not a power of two"),
    ("[kafka]\npartitions = 'many'\n", "invalid value for .*kafka.partitions: 'many'"),
    ("[capture]\nsample_rate = 0\n", "invalid value for capture.sample_rate"),
    ("[buffer]\nwhen_full = 'spill'\n", "invalid value for buffer.when_full: 'spill' is not one of block, drop_newest"),
    ("[kafka]\nshape = 'rows'\n", "invalid value for kafka.shape: 'rows' is not one of batch, record"),
    ("[telemetry]\nlisten = '9464'\n", "invalid value for telemetry.listen: '9464' is not HOST:PORT or off"),
    ("[telemetry]\nlisten = '0.0.0.0:9464'\n", "invalid value for telemetry.listen: 0.0.0.0 is reachable from "
     "other hosts: set telemetry.token_file too"),
    ("[telemetry]\nlisten = '[::]:9464'\n", "invalid value for telemetry.listen: \\[::\\] is reachable"),
    ("kafka = 3\n", r"\[kafka\] must be a table"),
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
    f.write_text('[kafka.properties]\n"sasl.password" = "hunter2"\n"sasl.username" = "agent"\n'
                 '[registry.properties]\n"basic.auth.user.info" = "u:p"\n')
    cfg = load_config(f, {})
    assert cfg.kafka.properties["sasl.password"] == "hunter2"
    shown = cfg.masked()
    assert shown["kafka"]["properties"] == {"sasl.password": "***", "sasl.username": "agent"}
    assert shown["registry"]["properties"] == {"basic.auth.user.info": "***"}
    assert "hunter2" not in repr(shown) and "u:p" not in repr(shown)


def test_every_setting_has_help_and_a_unique_env_var_and_flag() -> None:
    all_settings = list(settings())
    assert all(s.help for s in all_settings)
    envs = [s.env for s in all_settings if s.env]
    flags = [s.flag for s in all_settings if s.flag]
    assert len(envs) == len(set(envs)) and len(flags) == len(set(flags))


def test_reload_takes_only_the_live_settings() -> None:
    running = load_config(env={"HDRLOG_IFACE": "eth0"})
    new = load_config(env={"HDRLOG_IFACE": "eth0", "HDRLOG_SAMPLE_RATE": "8", "HDRLOG_TOPIC": "other",
                           "HDRLOG_PORTS": "53"})
    merged, ignored = reloadable(new, running)
    assert (merged.capture.sample_rate, merged.capture.ports) == (8, ("53",))
    assert merged.kafka.topic == running.kafka.topic == AgentConfig().kafka.topic
    assert ignored == ["kafka.topic"]


@pytest.mark.parametrize(("text", "mode", "warned"), [
    ('[kafka.properties]\n"sasl.password" = "hunter2"\n', 0o644, "holds secrets and any user can read it (mode 0644)"),
    ('[kafka.properties]\n"sasl.password" = "hunter2"\n', 0o640, None),
    ('[kafka]\ntopic = "t"\n', 0o644, None),  # nothing secret in it
    ('[kafka]\ntopic = "t"\n', 0o666, "can be changed by any user (mode 0666)"),
])
def test_a_config_file_others_may_read_or_change_is_warned_of(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                               text: str, mode: int, warned: str | None) -> None:
    f = tmp_path / "agent.toml"
    f.write_text(text)
    f.chmod(mode)
    with caplog.at_level("WARNING", logger="producer.config"):
        load_config(f, {})
    lines = [r.getMessage() for r in caplog.records]
    if warned is None:
        assert lines == []
    else:
        assert len(lines) == 1 and f"the config file {f} " in lines[0] and warned in lines[0], lines


def test_a_token_file_others_may_read_is_warned_of(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    token.chmod(0o644)
    cfg = load_config(None, {"HDRLOG_TOKEN_FILE": str(token)})
    with caplog.at_level("WARNING", logger="producer.config"):
        assert cfg.telemetry.token() == "s3cret"
    assert [r.getMessage() for r in caplog.records] == [
        f"the token file {token} holds secrets and any user can read it (mode 0644): chmod o-r it"]
    token.chmod(0o600)
    caplog.clear()
    cfg.telemetry.token()
    assert caplog.records == []


def test_the_sasl_password_comes_from_its_file_and_is_never_shown(tmp_path: Path) -> None:
    secret = tmp_path / "kafka-password"
    secret.write_text("pa55-word\n")
    secret.chmod(0o600)
    f = tmp_path / "agent.toml"
    f.write_text('[kafka.properties]\n"sasl.username" = "hdrlog"\n')
    cfg = load_config(f, {"HDRLOG_KAFKA_SASL_PASSWORD_FILE": str(secret)})
    assert cfg.kafka.client_properties() == {"sasl.username": "hdrlog", "sasl.password": "pa55-word"}
    f.write_text('[kafka.properties]\n"sasl.password" = "pa55-word"\n')  # in the file itself: shown as ***
    assert load_config(f, {}).masked()["kafka"]["properties"] == {"sasl.password": "***"}
    f.write_text('[kafka]\nsasl_password_file = "/nowhere"\n[kafka.properties]\n"sasl.password" = "x"\n')
    with pytest.raises(ConfigError, match="set it or kafka.properties sasl.password, not both"):
        load_config(f, {})
    with pytest.raises(ConfigError, match="kafka.sasl_password_file: cannot read /nowhere: No such file"):
        load_config(None, {"HDRLOG_KAFKA_SASL_PASSWORD_FILE": "/nowhere"}).kafka.client_properties()
    secret.write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        load_config(None, {"HDRLOG_KAFKA_SASL_PASSWORD_FILE": str(secret)}).kafka.client_properties()


def test_the_registry_password_comes_from_its_file_and_is_never_shown(tmp_path: Path) -> None:
    secret = tmp_path / "registry-password"
    secret.write_text("r3g-pass\n")
    secret.chmod(0o600)
    f = tmp_path / "agent.toml"
    f.write_text(f'[registry]\nusername = "hdrlog"\npassword_file = "{secret}"\n'
                 '[registry.properties]\n"ssl.ca.location" = "/etc/ca.pem"\n')
    cfg = load_config(f, {})
    assert cfg.registry.client_properties() == {"ssl.ca.location": "/etc/ca.pem",
                                                "basic.auth.user.info": "hdrlog:r3g-pass"}
    assert "r3g-pass" not in repr(cfg.masked())
    for text, message in [
        ('[registry]\nusername = "hdrlog"\n', "registry.password_file: registry.username and registry.password_file "
                                              "go together"),
        (f'[registry]\npassword_file = "{secret}"\n', "registry.username: registry.username and"),
        (f'[registry]\nusername = "a:b"\npassword_file = "{secret}"\n', "registry.username: must not contain ':'"),
        ('[registry]\nurl = "https://u:hunter2@registry:8081/apis/ccompat/v7"\n',
         "registry.url: holds credentials: give them as registry.username and registry.password_file"),
        ('[registry]\nurl = "u:hunter2@registry:8081"\n', "registry.url: holds credentials: give them as"),
        (f'[registry]\nusername = "u"\npassword_file = "{secret}"\n[registry.properties]\n'
         '"basic.auth.user.info" = "u:p"\n', "set it or registry.properties basic.auth.user.info, not both"),
    ]:
        f.write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_config(f, {})
    with pytest.raises(ConfigError, match="registry.password_file: cannot read /nowhere: No such file"):
        load_config(None, {"HDRLOG_REGISTRY_USERNAME": "u",
                           "HDRLOG_REGISTRY_PASSWORD_FILE": "/nowhere"}).registry.client_properties()


def test_fuzzed_config_files_give_one_line_errors_or_a_config(tmp_path: Path) -> None:
    """Random settings of every key (wrong types, absurd sizes, odd strings, unknown keys, broken
    TOML): load_config either returns a config or raises one ConfigError of one line naming the key or
    the file, never another exception."""
    import random
    import tomllib

    rnd = random.Random(16)
    keys = [s.key for s in settings()]
    values = ["1", "0", "-1", "2.5", "1e308", "-1e308", "9223372036854775808", "true", '""', '"x"',
              '"../../etc/passwd"', '"\\u0000"', f'"{"a" * 5000}"', "[]", "[1, 2]", "{}", '{a = 1}',
              '"127.0.0.1:99999"', '"[::1]:0"', '"off"', "nan", "inf", '"tc"', '"xdp"', '"disk"',
              '"memory"', '"drop_oldest"', '"zstd"']
    outcomes = {"config": 0, "error": 0}
    f = tmp_path / "agent.toml"
    for i in range(3000):
        chosen = rnd.sample(keys, rnd.randint(1, 4))
        if rnd.random() < 0.1:
            chosen.append(rnd.choice(["kafka.topik", "nope", "capture.sample"]))
        by_section: dict[str, list[str]] = {}
        for key in chosen:
            section, _, name = key.rpartition(".")
            by_section.setdefault(section, []).append(f"{name} = {rnd.choice(values)}")
        text = "\n".join(([*by_section.pop("")] if "" in by_section else [])
                         + [f"[{s}]\n" + "\n".join(lines) for s, lines in by_section.items()])
        if rnd.random() < 0.05:
            text = text[: rnd.randint(0, len(text))] + rnd.choice(["=", "[", '"', "\x00"])
        f.write_text(text)
        try:
            load_config(f, {})
            outcomes["config"] += 1
        except ConfigError as exc:
            outcomes["error"] += 1
            line = str(exc)
            assert line and "\n" not in line and "Traceback" not in line, (i, text, line)
            assert str(f) in line or any(k in line for k in keys) or "setting" in line, (i, text, line)
        except (tomllib.TOMLDecodeError, ValueError, TypeError, OverflowError, KeyError) as exc:
            raise AssertionError(f"case {i}: {text!r} raised {type(exc).__name__}: {exc}") from exc
    print(outcomes)
    assert outcomes["config"] > 50 and outcomes["error"] > 1000, outcomes
