"""Settings from the environment: sane defaults, and every bad value refused by name.

``Settings.from_env`` takes a plain dict, so nothing here touches ``os.environ``; the CLI
test runs ``python -m gateway`` in a subprocess to see what an operator sees.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import DEV_ADMIN_KEY, DEV_JWT_SECRET, ApiKey, ConfigError, Settings

ROOT = Path(__file__).resolve().parents[1]
PROD = {"OMS_ENV": "production", "OMS_API_KEYS": "admin=k-admin-0123",
        "OMS_JWT_SECRET": "s3cret-0123-for-hs256-at-least-32-bytes"}


def test_empty_environment_gives_documented_defaults_and_dev_credentials():
    s = Settings.from_env({})
    assert (s.host, s.port, s.workers, s.reservation_ttl) == ("127.0.0.1", 8080, 1, 900)
    assert (s.redis_url, s.database_url) == (None, None)
    assert (s.env, s.durability, s.run_writer, s.production) == ("development", "fsync", True, False)
    assert s.api_keys == {DEV_ADMIN_KEY: ApiKey("admin")}
    assert s.jwt_secret == DEV_JWT_SECRET
    assert s.dev_credentials
    assert s.max_in_flight >= 2000  # a flash sale is admitted, not shed, by default


def test_variables_outside_the_oms_prefix_are_ignored():
    unrelated = {"PORT": "abc", "REDIS_URL": "http://x", "oms_port": "1"}
    assert Settings.from_env(unrelated) == Settings.from_env({})


def test_every_documented_variable_is_read():
    s = Settings.from_env({
        "OMS_REDIS_URL": "unix:///tmp/v.sock", "OMS_DATABASE_URL": "postgres://u@db/oms",
        "OMS_HOST": "0.0.0.0", "OMS_PORT": "9000", "OMS_WORKERS": "4", "OMS_RESERVATION_TTL": "60",
        "OMS_API_KEYS": " ops=k-ops , storefront:web=k-web,payments=k-pay ", "OMS_JWT_SECRET": "jwt",
        "OMS_ENV": "test", "OMS_DURABILITY": "async", "OMS_RUN_WRITER": "off",
    })
    assert (s.redis_url, s.database_url) == ("unix:///tmp/v.sock", "postgres://u@db/oms")
    assert (s.host, s.port, s.workers, s.reservation_ttl) == ("0.0.0.0", 9000, 4, 60)
    assert s.api_keys == {"k-ops": ApiKey("ops"), "k-web": ApiKey("storefront", "web"),
                          "k-pay": ApiKey("payments")}
    assert (s.jwt_secret, s.env, s.durability, s.run_writer) == ("jwt", "test", "async", False)
    assert not s.dev_credentials


@pytest.mark.parametrize("url", ["redis://h:6379/0", "rediss://h:6380", "unix:///run/valkey.sock"])
def test_redis_url_schemes_accepted(url):
    assert Settings.from_env({"OMS_REDIS_URL": url}).redis_url == url


@pytest.mark.parametrize(("variable", "value"), [
    ("OMS_PORT", "abc"),
    ("OMS_PORT", "70000"),
    ("OMS_PORT", "-1"),
    ("OMS_WORKERS", "0"),
    ("OMS_RESERVATION_TTL", "0"),
    ("OMS_RESERVATION_TTL", "15m"),
    ("OMS_REDIS_URL", "http://x"),
    ("OMS_DATABASE_URL", "mysql://x"),
    ("OMS_DURABILITY", "maybe"),
    ("OMS_API_KEYS", "admin"),
    ("OMS_API_KEYS", "admin="),
    ("OMS_API_KEYS", "ops=k-ops,=k-anon"),
    ("OMS_API_KEYS", "root=k-root"),
    ("OMS_API_KEYS", "storefront=k-web"),
    ("OMS_API_KEYS", "storefront:tv=k-tv"),
    ("OMS_API_KEYS", "ops:web=k-ops"),
    ("OMS_ENV", "staging"),
    ("OMS_RUN_WRITER", "perhaps"),
    ("OMS_LOG_FORMAT", "xml"),
    ("OMS_LOG_FORMAT", "JSON"),
    ("OMS_ACCESS_LOG_SAMPLE", "1.5"),
    ("OMS_ACCESS_LOG_SAMPLE", "-0.1"),
    ("OMS_ACCESS_LOG_SAMPLE", "nan"),
    ("OMS_ACCESS_LOG_SAMPLE", "half"),
    ("OMS_PARTITIONS", "0"),
    ("OMS_PARTITIONS", "1025"),
    ("OMS_PARTITION_SEP", "::"),
    ("OMS_PARTITION_SEP", " "),
    ("OMS_PARTITION_SEP", "\n"),
    ("OMS_HOT_SKUS", "HOT"),
    ("OMS_HOT_SKUS", "HOT=x"),
    ("OMS_HOT_SKUS", "HOT=2"),  # more buckets than the one partition
    ("OMS_HOT_SKUS", "HOT=1"),
    ("OMS_HOT_SKUS", "bad sku=2"),
])
def test_bad_value_is_refused_naming_its_variable(variable, value):
    with pytest.raises(ConfigError, match=variable):
        Settings.from_env({variable: value})


def test_partitions_and_hot_skus_make_the_layout():
    assert Settings.from_env({}).layout.mark == "1"
    s = Settings.from_env({"OMS_PARTITIONS": "8", "OMS_PARTITION_SEP": "", "OMS_HOT_SKUS": " tv=8, radio=2 "})
    assert (s.layout.count, s.layout.sep, s.layout.hot) == (8, "", (("radio", 2), ("tv", 8)))
    assert len(s.layout.places("tv")) == 8 and len(s.layout.places("radio")) == 2
    with pytest.raises(ConfigError, match="named twice"):
        Settings.from_env({"OMS_PARTITIONS": "8", "OMS_HOT_SKUS": "tv=2,tv=4"})
    with pytest.raises(ConfigError, match="OMS_HOT_SKUS"):
        Settings.from_env({"OMS_PARTITIONS": "4", "OMS_HOT_SKUS": "tv=5"})


def test_log_format_is_text_unless_json_and_order_access_lines_off_unless_sampled():
    assert (Settings.from_env({}).log_format, Settings.from_env({}).access_log_sample) == ("text", 0.0)
    s = Settings.from_env({"OMS_LOG_FORMAT": "json", "OMS_ACCESS_LOG_SAMPLE": "0.01"})
    assert (s.log_format, s.access_log_sample) == ("json", 0.01)


def test_malformed_api_key_entry_is_not_echoed_in_the_error():
    with pytest.raises(ConfigError, match="OMS_API_KEYS") as info:
        Settings.from_env({"OMS_API_KEYS": "ops=k-ops,live-key-0123456789"})
    assert "live-key-0123456789" not in str(info.value)


@pytest.mark.parametrize("missing", ["OMS_API_KEYS", "OMS_JWT_SECRET"])
def test_production_without_configured_secrets_refuses_to_start(missing):
    env = {k: v for k, v in PROD.items() if k != missing}
    with pytest.raises(ConfigError, match=missing):
        Settings.from_env(env)


@pytest.mark.parametrize("override", [{"OMS_API_KEYS": f"admin={DEV_ADMIN_KEY}"},
                                      {"OMS_JWT_SECRET": DEV_JWT_SECRET}])
def test_production_refuses_the_development_key_or_secret(override):
    with pytest.raises(ConfigError, match="production"):
        Settings.from_env(PROD | override)


def test_production_with_own_secrets_starts_without_dev_credentials():
    s = Settings.from_env(PROD)
    assert s.production
    assert not s.dev_credentials
    assert DEV_ADMIN_KEY not in s.api_keys


def test_repr_hides_keys_and_secret():
    text = repr(Settings.from_env(PROD))
    assert "k-admin-0123" not in text
    assert "s3cret-0123" not in text
    assert "<1 keys>" in text


def test_toml_file_fills_gaps_and_environment_overrides_it(tmp_path):
    path = tmp_path / "oms.toml"
    path.write_text('port = 9090\nreservation_ttl = 120\ndurability = "async"\nrun_writer = false\n'
                    'api_keys = "ops=k-file"\n')
    s = Settings.from_env({"OMS_CONFIG": str(path), "OMS_PORT": "9191", "OMS_API_KEYS": "ops=k-env"})
    assert s.port == 9191
    assert s.api_keys == {"k-env": ApiKey("ops")}
    assert (s.reservation_ttl, s.durability, s.run_writer) == (120, "async", False)


def test_toml_path_argument_is_read_like_oms_config(tmp_path):
    path = tmp_path / "oms.toml"
    path.write_text("workers = 3\n")
    assert Settings.from_env({}, toml_path=str(path)).workers == 3


def test_bad_value_in_toml_file_is_refused_naming_its_variable(tmp_path):
    path = tmp_path / "oms.toml"
    path.write_text('port = "eighty"\n')
    with pytest.raises(ConfigError, match="OMS_PORT"):
        Settings.from_env({"OMS_CONFIG": str(path)})


def test_missing_toml_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="OMS_CONFIG"):
        Settings.from_env({"OMS_CONFIG": str(tmp_path / "absent.toml")})


def test_unparsable_toml_file_is_a_config_error(tmp_path):
    path = tmp_path / "oms.toml"
    path.write_text("port = = 1\n")
    with pytest.raises(ConfigError, match="OMS_CONFIG"):
        Settings.from_env({"OMS_CONFIG": str(path)})


@pytest.mark.parametrize("command", ["serve", "migrate"])
@pytest.mark.parametrize(("variable", "value"), [("OMS_PORT", "abc"), ("OMS_LOG_FORMAT", "yaml")])
def test_cli_with_bad_value_exits_2_naming_the_variable(tmp_path, command, variable, value):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMS_")}
    env |= {variable: value, "OMS_DATA_DIR": str(tmp_path / "data")}
    proc = subprocess.run([sys.executable, "-m", "gateway", command], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert variable in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "data").exists()  # refused before any embedded server started
