"""Settings: one typed object built once from ``OMS_*`` variables (and an optional TOML file).

No other module reads ``os.environ``; tests pass a dict to ``Settings.from_env``.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from allocator import STRATEGIES
from gateway import keys, redisconn

DEV_ADMIN_KEY = "dev-admin-key"
DEV_JWT_SECRET = "dev-secret"
MIN_JWT_SECRET = 32  # bytes; RFC 7518 3.2 wants an HS256 key of at least 256 bits
ROLES = ("admin", "ops", "payments", "storefront")
CHANNELS = ("web", "app", "store", "api", "marketplace")
REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "redis+cluster://")
LOG_FORMATS = ("text", "json")


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


@dataclasses.dataclass(frozen=True)
class ApiKey:
    role: str
    channel: str | None = None


@dataclasses.dataclass(frozen=True)
class Settings:
    redis_url: str | None = None
    database_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    reservation_ttl: int = 900
    api_keys: Mapping[str, ApiKey] = dataclasses.field(default_factory=dict)
    jwt_secret: str = DEV_JWT_SECRET
    env: str = "development"
    durability: str = "fsync"
    data_dir: Path = Path(".data")
    max_in_flight: int = 4096
    max_backlog: int = 1_000_000
    max_batch: int = 512
    max_body: int = 256 * 1024
    idempotency_ttl: int = 86400
    writer_batch: int = 2000
    writer_claim_idle_ms: int = 30000
    run_writer: bool = True
    strategy: str = "priority"
    low_stock: int = 10
    forecast_window: int = 300
    metrics_hot_skus: int = 20
    dev_credentials: bool = False
    log_format: str = "text"
    access_log_sample: float = 0.0
    console_dir: Path | None = None  # the console's build (console/dist beside the package when None)
    max_exports: int = 2
    export_prefetch: int = 500
    partitions: int = 1
    partition_sep: str = ":"
    hot_skus: tuple[tuple[str, int], ...] = ()

    def __repr__(self) -> str:
        fields = dataclasses.asdict(self)
        fields["api_keys"] = f"<{len(self.api_keys)} keys>"
        fields["jwt_secret"] = "***"
        return "Settings(" + ", ".join(f"{k}={v!r}" for k, v in fields.items()) + ")"

    @property
    def layout(self) -> keys.Partitions:
        """How SKUs, sales and orders map to inventory partitions (gateway/keys.py)."""
        return keys.Partitions(self.partitions, self.partition_sep, self.hot_skus)

    @property
    def production(self) -> bool:
        return self.env == "production"

    @classmethod
    def from_env(cls, environ: Mapping[str, str], toml_path: str | None = None) -> Settings:
        """Build settings from ``environ``, with a TOML file (``OMS_CONFIG``) filling gaps.

        Raises ConfigError naming the variable for any bad value, and in production mode
        when secrets are left at their development defaults.
        """
        values: dict[str, Any] = {}
        path = toml_path or environ.get("OMS_CONFIG")
        if path:
            try:
                data = tomllib.loads(Path(path).read_text())
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise ConfigError(f"OMS_CONFIG: cannot read {path}: {exc}") from exc
            values.update({f"OMS_{k.upper()}": str(v) for k, v in data.items()})
        values.update({k: v for k, v in environ.items() if k.startswith("OMS_")})
        return cls._parse(values)

    @classmethod
    def _parse(cls, v: Mapping[str, str]) -> Settings:
        env = v.get("OMS_ENV", "development")
        if env not in ("development", "production", "test"):
            raise ConfigError(f"OMS_ENV: expected development, production or test, got {env!r}")
        redis_url = v.get("OMS_REDIS_URL") or None
        if redis_url and not redis_url.startswith(REDIS_SCHEMES):
            raise ConfigError(f"OMS_REDIS_URL: scheme must be one of {', '.join(REDIS_SCHEMES)}")
        if redis_url and redisconn.is_cluster(redis_url):
            try:
                redisconn.seeds(redis_url)
            except ValueError as exc:
                raise ConfigError(f"OMS_REDIS_URL: {exc}") from None
        database_url = v.get("OMS_DATABASE_URL") or None
        if database_url and not database_url.startswith(("postgres://", "postgresql://")):
            raise ConfigError("OMS_DATABASE_URL: expected a postgresql:// URL")
        durability = v.get("OMS_DURABILITY", "fsync")
        if durability not in ("fsync", "async", "replicated"):
            raise ConfigError(f"OMS_DURABILITY: expected fsync, async or replicated, got {durability!r}")
        api_keys = _parse_api_keys(v.get("OMS_API_KEYS", ""))
        jwt_secret = v.get("OMS_JWT_SECRET", "")
        dev = False
        if not api_keys or not jwt_secret:
            if env == "production":
                raise ConfigError(
                    "OMS_ENV=production requires OMS_API_KEYS and OMS_JWT_SECRET; "
                    "refusing to start with development credentials"
                )
            dev = True
            api_keys = api_keys or {DEV_ADMIN_KEY: ApiKey("admin")}
            jwt_secret = jwt_secret or DEV_JWT_SECRET
        if env == "production" and (DEV_ADMIN_KEY in api_keys or jwt_secret == DEV_JWT_SECRET):
            raise ConfigError("OMS_ENV=production refuses the development key or secret")
        if env == "production" and len(jwt_secret.encode()) < MIN_JWT_SECRET:
            raise ConfigError(f"OMS_JWT_SECRET: production needs at least {MIN_JWT_SECRET} bytes "
                              "(RFC 7518: an HS256 key is at least as long as its hash)")
        return cls(
            redis_url=redis_url,
            database_url=database_url,
            host=v.get("OMS_HOST", "127.0.0.1"),
            port=_int(v, "OMS_PORT", 8080, 0, 65535),
            workers=_int(v, "OMS_WORKERS", 1, 1, 64),
            reservation_ttl=_int(v, "OMS_RESERVATION_TTL", 900, 1, 7 * 86400),
            api_keys=api_keys,
            jwt_secret=jwt_secret,
            env=env,
            durability=durability,
            data_dir=Path(v.get("OMS_DATA_DIR", ".data")),
            max_in_flight=_int(v, "OMS_MAX_IN_FLIGHT", 4096, 1, 1_000_000),
            max_backlog=_int(v, "OMS_MAX_BACKLOG", 1_000_000, 0, 10**9),
            max_batch=_int(v, "OMS_MAX_BATCH", 512, 1, 10_000),
            max_body=_int(v, "OMS_MAX_BODY", 256 * 1024, 1024, 64 * 1024 * 1024),
            idempotency_ttl=_int(v, "OMS_IDEMPOTENCY_TTL", 86400, 60, 30 * 86400),
            writer_batch=_int(v, "OMS_WRITER_BATCH", 2000, 1, 100_000),
            writer_claim_idle_ms=_int(v, "OMS_WRITER_CLAIM_IDLE_MS", 30000, 1, 3_600_000),
            run_writer=_bool(v, "OMS_RUN_WRITER", True),
            strategy=_choice(v, "OMS_STRATEGY", STRATEGIES),
            low_stock=_int(v, "OMS_LOW_STOCK", 10, 0, 10**9),
            forecast_window=_int(v, "OMS_FORECAST_WINDOW", 300, 10, 86400),
            metrics_hot_skus=_int(v, "OMS_METRICS_HOT_SKUS", 20, 0, 200),
            dev_credentials=dev,
            log_format=_choice(v, "OMS_LOG_FORMAT", LOG_FORMATS),
            access_log_sample=_fraction(v, "OMS_ACCESS_LOG_SAMPLE", 0.0),
            console_dir=Path(v["OMS_CONSOLE_DIR"]) if v.get("OMS_CONSOLE_DIR") else None,
            max_exports=_int(v, "OMS_MAX_EXPORTS", 2, 1, 64),
            export_prefetch=_int(v, "OMS_EXPORT_PREFETCH", 500, 1, 100_000),
            partitions=_int(v, "OMS_PARTITIONS", 1, 1, 1024),
            partition_sep=_separator(v, "OMS_PARTITION_SEP", ":"),
            hot_skus=_hot_skus(v.get("OMS_HOT_SKUS", ""), _int(v, "OMS_PARTITIONS", 1, 1, 1024)),
        )


def _int(v: Mapping[str, str], key: str, default: int, lo: int, hi: int) -> int:
    raw = v.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{key}: not a valid integer: {raw!r}") from None
    if not lo <= value <= hi:
        raise ConfigError(f"{key}: {value} is outside {lo}..{hi}")
    return value


def _fraction(v: Mapping[str, str], key: str, default: float) -> float:
    raw = v.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{key}: not a number: {raw!r}") from None
    if not 0.0 <= value <= 1.0:  # NaN fails this too
        raise ConfigError(f"{key}: expected a fraction 0..1, got {raw!r}")
    return value


def _choice(v: Mapping[str, str], key: str, choices: tuple[str, ...]) -> str:
    value = v.get(key) or choices[0]
    if value not in choices:
        raise ConfigError(f"{key}: expected one of {', '.join(choices)}, got {value!r}")
    return value


def _separator(v: Mapping[str, str], key: str, default: str) -> str:
    raw = v.get(key, default)
    if len(raw) > 1 or (raw and not raw.isprintable()) or raw.isspace():
        raise ConfigError(f"{key}: expected one printable character, or none (the whole SKU), got {raw!r}")
    return raw


def _hot_skus(raw: str, partitions: int) -> tuple[tuple[str, int], ...]:
    """Parse ``sku=K,...``: each hot SKU's stock buckets, 2..OMS_PARTITIONS."""
    found: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in raw.split(","))):
        sku, sep, k = part.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z0-9._:-]{1,64}", sku) or not k.isdigit():
            raise ConfigError(f"OMS_HOT_SKUS: expected sku=buckets, got {part!r}")
        if not 2 <= int(k) <= partitions:
            raise ConfigError(f"OMS_HOT_SKUS: {sku} wants {k} buckets; 2..OMS_PARTITIONS ({partitions})")
        if sku in found:
            raise ConfigError(f"OMS_HOT_SKUS: {sku} is named twice")
        found[sku] = int(k)
    return tuple(sorted(found.items()))


def _bool(v: Mapping[str, str], key: str, default: bool) -> bool:
    raw = v.get(key, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{key}: expected a boolean (1/0, true/false), got {raw!r}")


def _parse_api_keys(raw: str) -> dict[str, ApiKey]:
    """Parse ``role[:channel]=key,...``; a storefront key must name its channel."""
    keys: dict[str, ApiKey] = {}
    for n, part in enumerate(filter(None, (p.strip() for p in raw.split(","))), 1):
        spec, sep, key = part.partition("=")
        role, _, channel = spec.partition(":")
        if not sep:  # most likely a bare key: name the entry, never echo it
            raise ConfigError(f"OMS_API_KEYS: entry {n} is not role[:channel]=key")
        if not key:
            raise ConfigError(f"OMS_API_KEYS: expected role[:channel]=key, got {spec!r}= with no key")
        if role not in ROLES:
            raise ConfigError(f"OMS_API_KEYS: unknown role {role!r} (one of {', '.join(ROLES)})")
        if role == "storefront" and channel not in CHANNELS:
            raise ConfigError(f"OMS_API_KEYS: storefront key needs a channel ({', '.join(CHANNELS)})")
        if role != "storefront" and channel:
            raise ConfigError(f"OMS_API_KEYS: only storefront keys take a channel, not {role}")
        if key in keys:
            raise ConfigError(f"OMS_API_KEYS: entry {n} repeats a key given before; each key has one role")
        keys[key] = ApiKey(role, channel or None)
    return keys
