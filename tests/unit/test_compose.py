"""Static checks of docker-compose.yaml (and the Dockerfile) against the code.

No Docker engine is needed: the Compose file is parsed with PyYAML and every value that
the DAG and the Airflow components depend on is checked -- the services, the shared
``x-airflow-common`` anchor, the Celery executor and its broker, the shared secrets,
the image version versus requirements.txt, the Airflow connections, the mounted folders,
the shared staging volume and the healthchecks.

``${VAR:-default}`` references are resolved the way ``docker compose`` resolves them
when the variable is not set (i.e. to their defaults).
"""
from __future__ import annotations

import re
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
REQUIREMENTS = ROOT / "requirements.txt"
PLUGINS_DIR = ROOT / "plugins"

AIRFLOW_SERVICES = (
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
)
# service -> accepted image (repository, major version)
INFRA_SERVICES = {
    "airflow-metadata-db": ("postgres", "16"),
    "airflow-broker": ("redis", "7"),
    "target-postgres": ("postgres", "16"),
    "app-redis": ("redis", "7"),
    "mongo": ("mongo", "7"),
}
REQUIRED_SERVICES = AIRFLOW_SERVICES + tuple(INFRA_SERVICES)
# A healthcheck is required on every stateful service and on the api-server.
HEALTHCHECKED_SERVICES = tuple(INFRA_SERVICES) + ("airflow-apiserver",)
# Airflow service -> words its command must contain.
EXPECTED_COMMANDS = {
    "airflow-apiserver": "api-server",
    "airflow-scheduler": "scheduler",
    "airflow-dag-processor": "dag-processor",
    "airflow-triggerer": "triggerer",
    "airflow-worker": "celery worker",
    "airflow-init": "airflow db migrate",
}
# Project folder -> where it must be mounted in every Airflow service.
PROJECT_MOUNTS = {
    "dags": "/opt/airflow/dags",
    "plugins": "/opt/airflow/plugins",
    "include": "/opt/airflow/include",
}
FALLBACK_CONN_IDS = {"mongo": "mongo_default", "postgres": "postgres_default", "redis": "redis_default"}
API_SERVER_PORT = 8080


# ----------------------------------------------------------------------------- helpers

_INTERPOLATION = re.compile(
    r"\$\$|\$\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
)


def interpolate(value: object) -> str:
    """Resolve a Compose value as ``docker compose`` does with no variables set."""
    text = str(value)

    def substitute(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        op, arg = match.group("op"), match.group("arg")
        if op in ("-", ":-"):
            return arg
        if op in ("?", ":?"):
            raise AssertionError(f"required variable in compose value {text!r}: {match.group(0)}")
        return ""  # unset variable, or ${VAR+alt} / ${VAR:+alt} with VAR unset

    return _INTERPOLATION.sub(substitute, text)


def environment_of(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = (item.split("=", 1) if "=" in item else (item, "") for item in env)
        env = dict(pairs)
    return {str(k): interpolate(v) for k, v in env.items()}


def mounts_of(service: dict) -> list[tuple[str, str]]:
    """(source, target) for each volume of a service, short or long syntax."""
    mounts = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            mounts.append((interpolate(volume.get("source", "")), interpolate(volume["target"])))
        else:
            parts = interpolate(volume).split(":")
            if len(parts) == 1:  # anonymous volume
                mounts.append(("", parts[0]))
            else:
                mounts.append((parts[0], parts[1]))
    return mounts


def is_named_volume(source: str) -> bool:
    return bool(source) and not source.startswith((".", "/", "~", "$"))


def depends_on_of(service: dict) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def command_text(service: dict) -> str:
    command = service.get("command", "")
    if isinstance(command, list):
        command = " ".join(str(part) for part in command)
    return interpolate(command)


def container_ports(service: dict) -> set[int]:
    ports = set()
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            ports.add(int(port["target"]))
        else:
            ports.add(int(interpolate(port).split("/")[0].rsplit(":", 1)[-1]))
    return ports


def healthcheck_test(service: dict) -> str:
    check = service.get("healthcheck") or {}
    if check.get("disable"):
        return ""
    test = check.get("test")
    if isinstance(test, list):
        if not test or test[0] == "NONE":
            return ""
        test = " ".join(str(part) for part in test)
    return interpolate(test or "")


def pinned_airflow_version() -> str:
    assert REQUIREMENTS.is_file(), f"{REQUIREMENTS} is missing: it must pin apache-airflow==X.Y.Z"
    match = re.search(
        r"^\s*apache-airflow(?:\[[^\]]*\])?\s*==\s*([0-9][^\s;#,]*)",
        REQUIREMENTS.read_text(),
        re.MULTILINE,
    )
    assert match, "requirements.txt does not pin apache-airflow==X.Y.Z"
    return match.group(1)


def default_conn_ids() -> dict[str, str]:
    """The conn ids the DAG uses by default: from authmigrate.config, else the documented defaults."""
    if str(PLUGINS_DIR) not in sys.path:
        sys.path.insert(0, str(PLUGINS_DIR))
    try:
        from authmigrate.config import DEFAULT_CONN_IDS
    except ModuleNotFoundError as exc:
        if exc.name not in ("authmigrate", "authmigrate.config"):
            raise
        return dict(FALLBACK_CONN_IDS)
    return dict(DEFAULT_CONN_IDS)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def compose_text() -> str:
    assert COMPOSE_FILE.is_file(), f"{COMPOSE_FILE} is missing"
    return COMPOSE_FILE.read_text()


@pytest.fixture(scope="module")
def compose(compose_text: str) -> dict:
    return yaml.safe_load(compose_text)


@pytest.fixture(scope="module")
def services(compose: dict) -> dict:
    return compose["services"]


@pytest.fixture(scope="module")
def common(compose: dict) -> dict:
    assert "x-airflow-common" in compose, "the x-airflow-common anchor is missing"
    return compose["x-airflow-common"]


@pytest.fixture(scope="module")
def common_env(common: dict) -> dict[str, str]:
    return environment_of(common)


@pytest.fixture(scope="module")
def conn_uris(common_env: dict[str, str]) -> dict[str, str]:
    """kind (mongo/postgres/redis) -> connection URI from the AIRFLOW_CONN_<CONN_ID> variable."""
    uris = {}
    for kind, conn_id in default_conn_ids().items():
        var = f"AIRFLOW_CONN_{conn_id.upper()}"
        assert var in common_env, f"{var} (connection {conn_id!r} used by the DAG) is not set"
        uris[kind] = common_env[var]
    return uris


@pytest.fixture(scope="module")
def parse_connection():
    from airflow.models.connection import Connection

    return lambda uri: Connection(uri=uri)


# ----------------------------------------------------------------------------- services


def test_required_services_present(services: dict) -> None:
    missing = [name for name in REQUIRED_SERVICES if name not in services]
    assert not missing, f"services missing from docker-compose.yaml: {missing}"


@pytest.mark.parametrize("name", sorted(INFRA_SERVICES))
def test_infrastructure_images(services: dict, name: str) -> None:
    repository, major = INFRA_SERVICES[name]
    image = interpolate(services[name].get("image", ""))
    assert re.fullmatch(rf"{repository}:{major}(?:[.\-].*)?", image), (
        f"{name} must run {repository}:{major}, got {image!r}"
    )
    assert "build" not in services[name]


def test_broker_and_app_redis_are_separate_services(services: dict) -> None:
    broker, app = services["airflow-broker"], services["app-redis"]
    named = lambda svc: {src for src, _ in mounts_of(svc) if is_named_volume(src)}  # noqa: E731
    assert not named(broker) & named(app), "the Celery broker and the app's Redis share a volume"


def test_airflow_services_merge_the_common_anchor(compose_text: str) -> None:
    """Each Airflow service literally merges ``<<: *airflow-common`` (same YAML node)."""
    root = yaml.compose(compose_text)
    top = {key.value: value for key, value in root.value}
    common_node = top["x-airflow-common"]
    service_nodes = {key.value: value for key, value in top["services"].value}
    for name in AIRFLOW_SERVICES:
        merged = [
            value
            for key, value in service_nodes[name].value
            if key.tag == "tag:yaml.org,2002:merge" or key.value == "<<"
        ]
        merged_nodes = []
        for value in merged:
            merged_nodes.extend(value.value if isinstance(value, yaml.SequenceNode) else [value])
        assert any(node is common_node for node in merged_nodes), f"{name} does not merge *airflow-common"


def test_common_anchor_builds_the_image(common: dict) -> None:
    build = common.get("build")
    context = build.get("context") if isinstance(build, dict) else build
    dockerfile = build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile"
    assert context in (".", "./") and dockerfile == "Dockerfile", "x-airflow-common must build from ./Dockerfile"
    assert common.get("image"), "x-airflow-common must tag the built image"


@pytest.mark.parametrize("name", AIRFLOW_SERVICES)
def test_airflow_service_uses_common_settings(services: dict, common: dict, common_env: dict, name: str) -> None:
    service = services[name]
    assert service.get("build") == common["build"], f"{name} builds a different image"
    assert service.get("image") == common["image"], f"{name} uses a different image"

    env = environment_of(service)
    differing = {k: (v, env.get(k)) for k, v in common_env.items() if env.get(k) != v}
    assert not differing, f"{name} overrides or drops common environment variables: {differing}"

    assert mounts_of(service) == mounts_of(common), f"{name} has different volumes from x-airflow-common"

    deps = depends_on_of(service)
    for dep, condition in depends_on_of(common).items():
        assert deps.get(dep) == condition, f"{name} lost the common dependency on {dep} ({condition})"


def test_only_airflow_services_use_the_airflow_image(services: dict, common: dict) -> None:
    for name, service in services.items():
        uses_airflow = "build" in service or service.get("image") == common["image"]
        if name in AIRFLOW_SERVICES:
            assert uses_airflow
        else:
            assert not uses_airflow, f"{name} runs the Airflow image but is not an expected Airflow service"
            leaked = [k for k in environment_of(service) if k.startswith("AIRFLOW")]
            assert not leaked, f"{name} (not Airflow) carries Airflow settings: {leaked}"


@pytest.mark.parametrize("name", sorted(EXPECTED_COMMANDS))
def test_airflow_service_commands(services: dict, name: str) -> None:
    command = command_text(services[name])
    assert re.search(rf"(?<![\w-]){re.escape(EXPECTED_COMMANDS[name])}(?![\w-])", command), (
        f"{name} must run {EXPECTED_COMMANDS[name]!r}, its command is {command!r}"
    )


def test_api_server_publishes_port_8080(services: dict) -> None:
    assert API_SERVER_PORT in container_ports(services["airflow-apiserver"])


# ----------------------------------------------------------------------------- executor, secrets


def test_executor_is_celery(common_env: dict) -> None:
    assert common_env.get("AIRFLOW__CORE__EXECUTOR") == "CeleryExecutor"
    assert common_env.get("AIRFLOW__CORE__LOAD_EXAMPLES", "").lower() == "false"


def test_celery_broker_is_airflow_broker_not_app_redis(common_env: dict, services: dict) -> None:
    url = urlsplit(common_env["AIRFLOW__CELERY__BROKER_URL"])
    assert url.scheme in ("redis", "rediss")
    assert url.hostname == "airflow-broker", f"Celery broker must be airflow-broker, got {url.hostname!r}"
    assert url.hostname != "app-redis"
    for var in ("AIRFLOW__CORE__EXECUTOR", "AIRFLOW__CELERY__BROKER_URL"):
        assert "app-redis" not in common_env[var]


@pytest.mark.parametrize("var", ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CELERY__RESULT_BACKEND"])
def test_metadata_db_urls_point_at_airflow_metadata_db(common_env: dict, services: dict, var: str) -> None:
    db_env = environment_of(services["airflow-metadata-db"])
    url = urlsplit(common_env[var])
    assert "postgres" in url.scheme, f"{var} must use PostgreSQL, got {url.scheme!r}"
    assert url.hostname == "airflow-metadata-db", f"{var} must point at airflow-metadata-db, got {url.hostname!r}"
    assert url.port in (None, 5432)
    assert url.username == db_env["POSTGRES_USER"]
    assert url.password == db_env["POSTGRES_PASSWORD"]
    assert url.path.lstrip("/") == db_env["POSTGRES_DB"]


@pytest.mark.parametrize("var", ["AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY"])
def test_secrets_identical_for_all_airflow_services(services: dict, var: str) -> None:
    values = {name: environment_of(services[name]).get(var) for name in AIRFLOW_SERVICES}
    assert all(values.values()), f"{var} is not set (or empty) for: {[n for n, v in values.items() if not v]}"
    assert len(set(values.values())) == 1, f"{var} differs between Airflow services: {values}"


def test_secrets_come_from_variables(common: dict) -> None:
    raw = common["environment"]
    for var in ("AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY"):
        assert re.fullmatch(r"\$\{[A-Z_][A-Z0-9_]*:-[^}]+\}", str(raw[var])), (
            f"{var} must be read from a variable with a default, e.g. ${{AIRFLOW_JWT_SECRET:-change-me}}"
        )


def test_execution_api_url_points_at_api_server(common_env: dict, services: dict) -> None:
    url = urlsplit(common_env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"])
    assert url.hostname == "airflow-apiserver"
    assert url.port in container_ports(services["airflow-apiserver"])
    assert url.path.rstrip("/") == "/execution"


def test_simple_auth_manager_admin_and_password_file_on_a_volume(services: dict, common_env: dict) -> None:
    auth_manager = common_env.get("AIRFLOW__CORE__AUTH_MANAGER", "SimpleAuthManager")
    assert auth_manager.endswith("SimpleAuthManager")
    users = [u.strip() for u in common_env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"].split(",")]
    assert "admin:admin" in users
    passwords_file = common_env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]
    for name in ("airflow-init", "airflow-apiserver"):
        assert any(
            is_named_volume(src) and passwords_file.startswith(target.rstrip("/") + "/")
            for src, target in mounts_of(services[name])
        ), f"{passwords_file} is not on a named volume in {name}"
    assert "SIMPLE_AUTH_MANAGER_PASSWORDS_FILE" in command_text(services["airflow-init"]), (
        "airflow-init must write the admin password file"
    )


# ----------------------------------------------------------------------------- image version


def test_image_versions_match_requirements_pin(common: dict) -> None:
    version = pinned_airflow_version()

    assert DOCKERFILE.is_file(), "Dockerfile is missing"
    dockerfile = DOCKERFILE.read_text()
    match = re.search(r"^\s*FROM\s+(?:--platform=\S+\s+)?apache/airflow:(\S+)", dockerfile, re.MULTILINE | re.I)
    assert match, "Dockerfile must build FROM apache/airflow:<version>"
    base_tag = match.group(1)
    assert base_tag.split("-")[0] == version, f"Dockerfile FROM apache/airflow:{base_tag}, requirements pin {version}"
    assert "requirements.txt" in dockerfile and "pip install" in dockerfile

    image = interpolate(common["image"])
    assert ":" in image.rsplit("/", 1)[-1], f"the Airflow image {image!r} has no tag"
    assert image.rsplit(":", 1)[1] == version, f"image {image!r} is not tagged with apache-airflow {version}"


# ----------------------------------------------------------------------------- connections


def test_conn_ids_and_env_var_names(common_env: dict) -> None:
    conn_ids = default_conn_ids()
    assert set(conn_ids) >= {"mongo", "postgres", "redis"}
    for conn_id in conn_ids.values():
        assert f"AIRFLOW_CONN_{conn_id.upper()}" in common_env


def test_connection_types_match_the_hooks(conn_uris: dict, parse_connection) -> None:
    from airflow.providers.mongo.hooks.mongo import MongoHook
    from airflow.providers.postgres.hooks.postgres import PostgresHook
    from airflow.providers.redis.hooks.redis import RedisHook

    expected = {"mongo": MongoHook.conn_type, "postgres": PostgresHook.conn_type, "redis": RedisHook.conn_type}
    assert expected == {"mongo": "mongo", "postgres": "postgres", "redis": "redis"}
    for kind, uri in conn_uris.items():
        assert parse_connection(uri).conn_type == expected[kind], f"{kind} connection {uri!r} has the wrong type"


def test_mongo_connection(conn_uris: dict, parse_connection, services: dict) -> None:
    conn = parse_connection(conn_uris["mongo"])
    assert conn.host == "mongo" and "mongo" in services
    assert conn.port in (None, 27017)
    assert conn.schema, "the Mongo connection must name the source database (URI path)"


def test_postgres_connection_matches_target_service(conn_uris: dict, parse_connection, services: dict) -> None:
    conn = parse_connection(conn_uris["postgres"])
    target_env = environment_of(services["target-postgres"])
    assert conn.host == "target-postgres"
    assert conn.port in (None, 5432)
    assert conn.login == target_env["POSTGRES_USER"]
    assert conn.password == target_env["POSTGRES_PASSWORD"]
    assert conn.schema == target_env["POSTGRES_DB"]


def test_redis_connection_is_the_app_redis(conn_uris: dict, parse_connection) -> None:
    conn = parse_connection(conn_uris["redis"])
    assert conn.host == "app-redis"
    assert conn.port in (None, 6379)
    assert "db" in conn.extra_dejson, "the Redis hook reads the database number only from the 'db' extra"
    assert int(conn.extra_dejson["db"]) >= 0


# ----------------------------------------------------------------------------- mounts


@pytest.mark.parametrize("folder", sorted(PROJECT_MOUNTS))
def test_project_folder_exists_and_is_mounted_everywhere(services: dict, folder: str) -> None:
    assert (ROOT / folder).is_dir(), f"{folder}/ does not exist in the repository"
    target = PROJECT_MOUNTS[folder]
    for name in AIRFLOW_SERVICES:
        sources = [src for src, tgt in mounts_of(services[name]) if tgt.rstrip("/") == target]
        assert sources, f"{name} does not mount anything at {target}"
        assert (ROOT / sources[0]).resolve() == (ROOT / folder).resolve(), (
            f"{name} mounts {sources[0]!r} at {target}, expected ./{folder}"
        )


def test_airflow_finds_dags_plugins_and_include(common_env: dict) -> None:
    assert common_env.get("AIRFLOW__CORE__PLUGINS_FOLDER", PROJECT_MOUNTS["plugins"]) == PROJECT_MOUNTS["plugins"]
    assert common_env.get("AIRFLOW__CORE__DAGS_FOLDER", PROJECT_MOUNTS["dags"]) == PROJECT_MOUNTS["dags"]
    assert PROJECT_MOUNTS["plugins"] in common_env.get("PYTHONPATH", "").split(":"), (
        "plugins/ must be on PYTHONPATH so 'from authmigrate import ...' works in tasks"
    )
    assert common_env.get("AUTHMIGRATE_INCLUDE_DIR") == PROJECT_MOUNTS["include"]


def test_staging_volume_is_shared_at_the_staging_dir(compose: dict, services: dict, common_env: dict) -> None:
    staging_dir = common_env.get("AUTHMIGRATE_STAGING_DIR")
    assert staging_dir, "AUTHMIGRATE_STAGING_DIR is not set"
    declared = set((compose.get("volumes") or {}).keys())
    sources = set()
    for name in AIRFLOW_SERVICES:
        assert environment_of(services[name]).get("AUTHMIGRATE_STAGING_DIR") == staging_dir
        matches = [src for src, tgt in mounts_of(services[name]) if tgt.rstrip("/") == staging_dir.rstrip("/")]
        assert matches, f"{name} does not mount the staging volume at {staging_dir}"
        assert is_named_volume(matches[0]), f"{name} mounts {matches[0]!r} at {staging_dir}: not a named volume"
        assert matches[0] in declared, f"volume {matches[0]!r} is not declared under top-level volumes"
        sources.add(matches[0])
    assert len(sources) == 1, f"Airflow services mount different staging volumes: {sources}"


def test_named_volumes_are_declared(compose: dict, services: dict) -> None:
    declared = set((compose.get("volumes") or {}).keys())
    for name, service in services.items():
        for src, _ in mounts_of(service):
            if is_named_volume(src):
                assert src in declared, f"{name} uses undeclared volume {src!r}"


# ----------------------------------------------------------------------------- health, ordering


@pytest.mark.parametrize("name", HEALTHCHECKED_SERVICES)
def test_healthchecks(services: dict, name: str) -> None:
    test = healthcheck_test(services[name])
    assert test, f"{name} has no (enabled) healthcheck"
    if name == "airflow-apiserver":
        assert "/api/v2/monitor/health" in test
        assert str(API_SERVER_PORT) in test


def test_depends_on_is_consistent(services: dict) -> None:
    for name, service in services.items():
        for dep, condition in depends_on_of(service).items():
            assert dep in services, f"{name} depends on unknown service {dep!r}"
            assert dep != name
            if condition == "service_healthy":
                assert healthcheck_test(services[dep]), f"{name} waits for {dep} to be healthy; it has no healthcheck"
            elif condition == "service_completed_successfully":
                assert dep == "airflow-init", f"{name} waits for {dep} to complete"


def test_airflow_services_wait_for_init_and_infrastructure(services: dict) -> None:
    for name in AIRFLOW_SERVICES:
        deps = depends_on_of(services[name])
        assert deps.get("airflow-metadata-db") == "service_healthy", name
        assert deps.get("airflow-broker") == "service_healthy", name
        if name != "airflow-init":
            assert deps.get("airflow-init") == "service_completed_successfully", name
    worker_deps = depends_on_of(services["airflow-worker"])
    assert worker_deps.get("airflow-apiserver") == "service_healthy", "tasks need the execution API"
