"""Run configuration: trigger params, connection ids, paths, and identifier checks.

Only the standard library is imported here: the DAG file imports this module at parse time.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from authmigrate.registry import COLLECTIONS

DAG_ID = "mongo_to_postgres"
DEFAULT_CONN_IDS = {"mongo": "mongo_default", "postgres": "postgres_default", "redis": "redis_default"}
BOOKKEEPING_SCHEMA = "authmigrate"

# Logical collection name -> default MongoDB collection name, from the collections' declarations
# (registry.py). An app using Mongoose stores them lower-cased and pluralised (oauthclientapps,
# oauthroles): check yours.
DEFAULT_SOURCE_COLLECTIONS = {name: spec.name for name, spec in COLLECTIONS.items()}

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class Permanent(Exception):
    """A failure no retry can fix (bad params or settings, a validation finding, a refused
    cutover, a target locked by a live run): the task fails at once, and the message ends with
    what the operator should do (``what_to_do``)."""

    what_to_do = "fix the cause named above and trigger the DAG again"


class ConfigError(Permanent, ValueError):
    """A trigger param or setting is invalid; the message says which and why."""

    what_to_do = "correct the param or setting named above and trigger the DAG again"


def project_root() -> Path:
    return Path(__file__).resolve().parents[2]


def include_dir() -> Path:
    return Path(os.environ.get("AUTHMIGRATE_INCLUDE_DIR") or project_root() / "include")


def sql_dir() -> Path:
    return include_dir() / "sql"


SCHEMA_PATTERN = r"^(?!pg_|information_schema$|authmigrate$)[a-z_][a-z0-9_]{0,62}$"


def staging_root() -> Path:
    explicit = os.environ.get("AUTHMIGRATE_STAGING_DIR")
    if explicit:
        return Path(explicit)
    airflow_home = os.environ.get("AIRFLOW_HOME") or str(Path.home() / "airflow")
    return Path(airflow_home) / "authmigrate-staging"


def validate_identifier(value: Any, what: str) -> str:
    """Accept only plain lower-case SQL identifiers; anything else is refused, never quoted through."""
    if not isinstance(value, str) or not _IDENTIFIER.match(value) or value.startswith("pg_"):
        raise ConfigError(
            f"{what} must be a lower-case SQL identifier (letters, digits, underscore; "
            f"not starting with a digit or 'pg_'; at most 63 chars), got {value!r}"
        )
    if value in (BOOKKEEPING_SCHEMA, "information_schema"):
        raise ConfigError(f"{what} cannot be {value!r}: that schema holds "
                          + ("the pipeline's bookkeeping" if value == BOOKKEEPING_SCHEMA else "PostgreSQL's catalog views"))
    return value


def _choice(value: Any, choices: tuple[str, ...], what: str) -> str:
    if value not in choices:
        raise ConfigError(f"{what} must be one of {list(choices)}, got {value!r}")
    return value


def _unmapped(value: Any) -> str:
    value = _choice(value, ("report", "fail"), "unmapped")
    if value == "fail" and server_projection():
        raise ConfigError("unmapped=fail needs every field of every document, but AUTHMIGRATE_SERVER_PROJECTION=true "
                          "reads the mapped fields only: unset it for this run, or use unmapped=report")
    return value


def _source(params: dict[str, Any]) -> dict[str, str]:
    """source / source_path / source_database; a path outside AUTHMIGRATE_SOURCE_ROOTS is refused
    here, before any task reads a byte of it."""
    source = _choice(params.get("source", "mongodb"), ("mongodb", "files"), "source")
    path, database = params.get("source_path") or "", params.get("source_database") or ""
    if not isinstance(database, str) or "/" in database or ".." in database or "\x00" in database:
        raise ConfigError(f"source_database must be a database name, got {database!r}")
    if source == "files":
        from authmigrate.filesource import check_allowed

        if not path:
            raise ConfigError("source=files needs source_path: the dump folder, or a mongodump --archive file")
        check_allowed(path)
    return {"source": source, "source_path": path, "source_database": database}


def default_cache_keys() -> dict[str, list[str]]:
    """Cache-key patterns from AUTHMIGRATE_CACHE_KEYS (JSON), e.g.
    {"users": ["cache:user:{id}"], "oauth_client_apps": ["cache:oauth_app:{client_id}"]}."""
    import json

    raw = os.environ.get("AUTHMIGRATE_CACHE_KEYS")
    if not raw:
        return {}
    try:
        return validate_cache_keys(json.loads(raw))
    except ValueError as exc:
        raise ConfigError(f"AUTHMIGRATE_CACHE_KEYS is not valid: {exc}") from exc


def validate_cache_keys(value: Any) -> dict[str, list[str]]:
    """Each pattern may only use the columns its table records for changed rows."""
    from string import Formatter

    from authmigrate.registry import TABLES

    if not isinstance(value, dict):
        raise ConfigError(f"cache_keys must map table names to lists of key patterns, got {type(value).__name__}")
    out = {}
    for table, patterns in value.items():
        spec = TABLES.get(table)
        if spec is None or not spec.change_fields:
            choices = sorted(t for t, s in TABLES.items() if s.change_fields)
            raise ConfigError(f"cache_keys: no cache invalidation for table {table!r}; choose from {choices}")
        if isinstance(patterns, str):
            patterns = [patterns]
        for pattern in patterns:
            if not isinstance(pattern, str) or not pattern:
                raise ConfigError(f"cache_keys[{table!r}]: patterns must be non-empty strings")
            fields = {f for _, f, _, _ in Formatter().parse(pattern) if f is not None}
            if not fields or not fields <= set(spec.change_fields) or any(ch in pattern for ch in "*?[]"):
                raise ConfigError(
                    f"cache_keys[{table!r}]: {pattern!r} must use placeholders from {list(spec.change_fields)} "
                    f"and no glob characters")
        out[table] = list(patterns)
    return out


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ConfigError(f"environment variable {name} must be a number, got {raw!r}") from exc


def task_defaults() -> dict[str, Any]:
    """default_args for every task: retries with exponential backoff, tunable by environment."""
    return {
        "retries": int(_env_float("AUTHMIGRATE_RETRIES", 3)),
        "retry_delay": timedelta(seconds=_env_float("AUTHMIGRATE_RETRY_DELAY_SECONDS", 30)),
        "retry_exponential_backoff": 2.0,  # the delay doubles on each retry
        "max_retry_delay": timedelta(seconds=_env_float("AUTHMIGRATE_MAX_RETRY_DELAY_SECONDS", 600)),
    }


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if raw not in ("true", "false", "1", "0", "yes", "no", ""):
        raise ConfigError(f"{name} must be true or false, got {raw!r}")
    return default if raw == "" else raw in ("true", "1", "yes")


def server_projection() -> bool:
    """AUTHMIGRATE_SERVER_PROJECTION=true: ask MongoDB for the mapped fields only. Off by default:
    the transform reads only mapped fields either way (and rejects show only those), and on the
    bundled nx-27017 a projection halves the read rate (docs/performance.md); turn it on when
    documents carry large fields outside the mapping."""
    return _env_bool("AUTHMIGRATE_SERVER_PROJECTION", False)


def accept_while_exporting() -> bool:
    """AUTHMIGRATE_ACCEPT_WHILE_EXPORTING=false: the users export from a server no longer
    accepts its documents while it reads (``export.AcceptWhileReading``). On by default."""
    return _env_bool("AUTHMIGRATE_ACCEPT_WHILE_EXPORTING", True)


def export_parallelism() -> int:
    """AUTHMIGRATE_EXPORT_PARALLELISM: how many export chunks of one collection may run at once
    (the mapped task's max_active_tis_per_dag; Airflow fixes it when it parses the DAG, so it
    cannot be a trigger param)."""
    value = int(_env_float("AUTHMIGRATE_EXPORT_PARALLELISM", 2))
    if value < 1:
        raise ConfigError(f"AUTHMIGRATE_EXPORT_PARALLELISM must be at least 1, got {value}")
    return value


def schedule() -> str | None:
    """Cron or preset from AUTHMIGRATE_SCHEDULE; unset means triggered by hand only."""
    return os.environ.get("AUTHMIGRATE_SCHEDULE") or None


@dataclass(frozen=True)
class RunConfig:
    """The validated trigger params of one DAG run."""

    run_id: str
    collections: tuple[str, ...]
    source_collections: dict[str, str]
    batch_size: int = 5000
    chunk_size: int = 0
    target_schema: str = "public"
    max_reject_ratio: float = 0.05
    dry_run: bool = False
    mongo_conn_id: str = DEFAULT_CONN_IDS["mongo"]
    postgres_conn_id: str = DEFAULT_CONN_IDS["postgres"]
    redis_conn_id: str = DEFAULT_CONN_IDS["redis"]
    sessions: bool = True
    verify: bool = True
    mode: str = "full"
    overlap_seconds: int = 300
    cutover: bool = False
    cache_keys: dict[str, list[str]] = field(default_factory=dict)
    unmapped: str = "report"
    source: str = "mongodb"
    source_path: str = ""
    source_database: str = ""

    @classmethod
    def from_params(cls, params: dict[str, Any], run_id: str) -> "RunConfig":
        known = set(DEFAULT_SOURCE_COLLECTIONS)
        collections = tuple(params.get("collections") or DEFAULT_SOURCE_COLLECTIONS)
        unknown = [c for c in collections if c not in known]
        if unknown:
            raise ConfigError(f"unknown collections {unknown}; choose from {sorted(known)}")
        sources = dict(DEFAULT_SOURCE_COLLECTIONS)
        for logical in DEFAULT_SOURCE_COLLECTIONS:
            name = params.get(f"source_{logical}")
            if name:
                if not isinstance(name, str) or "\x00" in name or name.startswith("system."):
                    raise ConfigError(f"source_{logical} is not a valid MongoDB collection name: {name!r}")
                sources[logical] = name
        batch_size = int(params.get("batch_size", 5000))
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        chunk_size = int(params.get("chunk_size", 0) or 0)
        if chunk_size < 0:
            raise ConfigError(f"chunk_size must be 0 (no chunks) or positive, got {chunk_size}")
        ratio = float(params.get("max_reject_ratio", 0.05))
        if not 0 <= ratio <= 1:
            raise ConfigError(f"max_reject_ratio must be between 0 and 1, got {ratio}")
        return cls(
            run_id=run_id,
            collections=collections,
            source_collections=sources,
            batch_size=batch_size,
            chunk_size=chunk_size,
            target_schema=validate_identifier(params.get("target_schema", "public"), "target_schema"),
            max_reject_ratio=ratio,
            dry_run=bool(params.get("dry_run", False)),
            mongo_conn_id=params.get("mongo_conn_id") or DEFAULT_CONN_IDS["mongo"],
            postgres_conn_id=params.get("postgres_conn_id") or DEFAULT_CONN_IDS["postgres"],
            redis_conn_id=params.get("redis_conn_id") or DEFAULT_CONN_IDS["redis"],
            sessions=bool(params.get("sessions", True)),
            verify=bool(params.get("verify", True)),
            mode=_choice(params.get("mode", "full"), ("full", "incremental"), "mode"),
            overlap_seconds=int(params.get("overlap_seconds", 300)),
            cutover=bool(params.get("cutover", False)),
            cache_keys=validate_cache_keys(params.get("cache_keys") or {}),
            unmapped=_unmapped(params.get("unmapped", "report")),
            **_source(params),
        )

    def staging_dir(self) -> Path:
        """Run-scoped staging folder; run ids are made file-name safe."""
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", self.run_id)
        return staging_root() / DAG_ID / safe
