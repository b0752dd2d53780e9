"""deploy/k8s/: valid Kubernetes objects that fit Postal, with no cluster at hand.

Each manifest is validated, strictly (an unknown field is an error, as a typo would be), against
the Kubernetes OpenAPI schemas that kubernetes-validate ships, for every Kubernetes version from
OLDEST_KUBERNETES to the newest it knows. Then what a schema cannot know: the probes' paths are
served by the app, the grace period covers the shutdown sequence, every environment variable
is a Postal setting whose value Postal accepts, the resources are the seed's, the pools fit
Redis's and PostgreSQL's connection limits at the HPA's maximum, and the names tie together.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import typer.main
import yaml
from kubernetes_validate.utils import all_versions
from starlette.routing import Match

from postal import __version__
from postal.api.routes.ops import READY_CHECK_TIMEOUT
from postal.app import DRAIN_TIMEOUT, create_app
from postal.cache.policy.invalidation import LAST_ATTEMPT_TIMEOUT
from postal.cli import app as cli_app
from postal.cli.serve import GRACEFUL_SHUTDOWN
from postal.observability.multiproc import MULTIPROC_ENV
from postal.settings import Settings, SettingsError, load_settings
from tests.deploy.test_dockerfile import image_user

K8S_DIR = Path(__file__).parents[2] / "deploy" / "k8s"
OLDEST_KUBERNETES = (1, 29)
SHUTDOWN_MARGIN = 5  # seconds the grace period keeps beyond the sum, for closing pools and engine
POSTGRES_MAX_CONNECTIONS = 100  # PostgreSQL's default max_connections
POSTGRES_RESERVED = 10  # left for superusers, migrations, psql and monitoring
REDIS_HEADROOM = 0.5  # Postal may use at most half of Redis's maxclients; the rest for others
ENV_NOT_SETTINGS = {MULTIPROC_ENV}  # read by prometheus_client, not by Postal's settings


def manifests() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted(K8S_DIR.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for document in yaml.safe_load_all(path.read_text()):
            if document is not None:
                yield path.name, document


def objects() -> dict[tuple[str, str], dict[str, Any]]:
    return {(doc["kind"], doc["metadata"]["name"]): doc for _, doc in manifests()}


def the(kind: str, name: str) -> dict[str, Any]:
    return objects()[(kind, name)]


def kubernetes_versions() -> list[str]:
    def minor(version: str) -> tuple[int, int]:
        major, minor_, *_ = version.split(".")
        return int(major), int(minor_)

    # the package ships each version twice (a strict and a lax schema set): once is enough
    return sorted(
        {version for version in all_versions() if minor(version) >= OLDEST_KUBERNETES}, key=minor
    )


DEPLOYMENT = the("Deployment", "postal")
POD = DEPLOYMENT["spec"]["template"]["spec"]
(CONTAINER,) = POD["containers"]
(MIGRATE,) = POD["initContainers"]
CONFIG = the("ConfigMap", "postal-config")["data"]
SECRET = the("Secret", "postal-secrets")["stringData"]
HPA = the("HorizontalPodAutoscaler", "postal")


# -- the schemas -------------------------------------------------------------------------------


@pytest.mark.parametrize("version", kubernetes_versions())
def test_every_manifest_is_valid_for_kubernetes(version: str) -> None:
    documents = list(manifests())
    assert len(documents) >= 8
    for filename, document in documents:
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = "/".join(str(part) for part in exc.path)
            pytest.fail(f"{filename}: {document['kind']} at {where}: {exc.message}")


def test_the_schema_check_catches_a_misspelt_field() -> None:
    broken = the("Deployment", "postal")
    broken["spec"]["template"]["spec"]["terminationGracePeriod"] = 30
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, kubernetes_versions()[-1], strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    on_disk = {path.name for path in K8S_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == on_disk


def test_kustomize_builds_valid_objects() -> None:
    """`kubectl apply -k` as docs/deploy.md says, short of a cluster: kustomize's own build (in
    kubectl, which this kind of machine ships) gives the same objects, labelled, and valid."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the kustomization's resource list is checked above")
    result = subprocess.run(
        [kubectl, "kustomize", str(K8S_DIR)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    built = [document for document in yaml.safe_load_all(result.stdout) if document]
    assert len(built) == len(list(manifests()))
    for document in built:
        assert document["metadata"]["labels"]["app.kubernetes.io/part-of"] == "postal"
        kubernetes_validate.validate(document, kubernetes_versions()[-1], strict=True)


def test_kubernetes_versions_checked() -> None:
    versions = kubernetes_versions()
    assert versions[0].startswith("1.29.")
    assert len(versions) >= 5


# -- the pod: resources, probes, shutdown, security ---------------------------------------------


def test_resources_are_the_seeds() -> None:
    assert CONTAINER["resources"] == {
        "requests": {"cpu": "100m", "memory": "256Mi"},
        "limits": {"cpu": "500m", "memory": "512Mi"},
    }


def served(path: str) -> bool:
    app = create_app(load_settings({}))
    scope = {"type": "http", "method": "GET", "path": path, "root_path": "", "headers": []}
    return any(route.matches(scope)[0] == Match.FULL for route in app.router.routes)


def test_the_route_check_can_fail() -> None:
    assert not served("/healthz-not")


def test_probes_use_the_apps_health_routes() -> None:
    port = CONTAINER["ports"][0]
    assert CONTAINER["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port["name"]}
    assert CONTAINER["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    assert CONTAINER["startupProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert served(CONTAINER[probe]["httpGet"]["path"]), probe


def test_readiness_waits_longer_than_the_apps_database_check() -> None:
    assert CONTAINER["readinessProbe"]["timeoutSeconds"] > READY_CHECK_TIMEOUT


def test_the_port_is_postals_everywhere() -> None:
    port = int(CONFIG["POSTAL_PORT"])
    assert CONTAINER["ports"] == [{"name": "http", "containerPort": port, "protocol": "TCP"}]
    annotations = DEPLOYMENT["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == port
    assert served(annotations["prometheus.io/path"])
    service = the("Service", "postal")
    assert service["spec"]["ports"][0]["targetPort"] == "http"


def pre_stop_seconds() -> int:
    command = CONTAINER["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    assert len(command) == 2
    return int(command[1])


def test_the_grace_period_covers_the_shutdown_sequence() -> None:
    """preStop pause, then uvicorn's wait for requests in flight, then the lifespan's drain of
    pending fills and the invalidator's last attempt, then a margin for closing."""
    pause = pre_stop_seconds()
    assert pause >= 3  # long enough for the endpoints' removal to reach the proxies
    needed = pause + GRACEFUL_SHUTDOWN + DRAIN_TIMEOUT + LAST_ATTEMPT_TIMEOUT + SHUTDOWN_MARGIN
    assert POD["terminationGracePeriodSeconds"] >= needed


def test_serve_and_migrate_arguments_are_what_the_cli_accepts() -> None:
    command = typer.main.get_command(cli_app)
    assert isinstance(command, typer.core.TyperGroup)
    name, *options = CONTAINER["args"]
    assert name == "serve"
    params = command.commands["serve"].make_context("serve", list(options)).params
    assert params["host"] == "0.0.0.0"
    assert params["workers"] >= 1
    assert MIGRATE["args"] == ["migrate"]
    assert "migrate" in command.commands
    assert MIGRATE["image"] == CONTAINER["image"]


def test_it_runs_unprivileged_on_a_read_only_root() -> None:
    pod_security = POD["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    assert pod_security["runAsUser"] == image_user()[0] != 0
    for container in (CONTAINER, MIGRATE):
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]


def test_the_metrics_directory_is_an_empty_dir() -> None:
    env = {item["name"]: item["value"] for item in CONTAINER["env"]}
    mounts = {mount["mountPath"]: mount["name"] for mount in CONTAINER["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in POD["volumes"]}
    directory = env[MULTIPROC_ENV]
    assert "emptyDir" in volumes[mounts[directory]]


def test_every_writable_path_is_a_volume() -> None:
    """With a read-only root, /tmp must be mounted for anything that writes a temporary file."""
    assert "/tmp" in {mount["mountPath"] for mount in CONTAINER["volumeMounts"]}


# -- the environment -----------------------------------------------------------------------------


# What an operator puts in place of the token's placeholder (`openssl rand -hex 32`).
A_REAL_TOKEN = "9d4f1e0b7c2a6e8f3b5d1c9a0e7f2b4d6c8a1e3f5b7d9c0a2e4f6b8d0c1a3e5f"


def environment() -> dict[str, str]:
    """The pod's environment once the operator has filled in the Secret."""
    return {**CONFIG, **SECRET, "POSTAL_API_TOKEN": A_REAL_TOKEN}


def test_every_variable_is_a_postal_setting() -> None:
    settings = {name.upper() for name in Settings.model_fields}
    assert set(CONFIG) <= settings, set(CONFIG) - settings
    assert set(SECRET) <= settings, set(SECRET) - settings
    direct = {item["name"] for item in CONTAINER["env"]}
    assert direct <= settings | ENV_NOT_SETTINGS


def test_postal_accepts_the_values() -> None:
    """The ConfigMap and the Secret's placeholders through Postal's own settings: a value Postal
    would refuse at start-up (a duration without a unit, min idle above max idle) fails here.
    The token's placeholder is replaced first, as the operator must: it is refused itself."""
    settings = load_settings(environment())
    assert settings.api_token is not None  # else `serve --host 0.0.0.0` exits 2
    assert settings.database.startswith("postgresql+asyncpg://")
    assert settings.read_redis_url is not None
    assert settings.write_redis_url is not None
    assert not settings.embedded_redis
    assert settings.postal_port == CONTAINER["ports"][0]["containerPort"]


def test_the_token_placeholder_stops_the_pod_at_start() -> None:
    """Applied as shipped, the pod exits 2 naming POSTAL_API_TOKEN: a crash loop that says
    why, not a service whose writes anyone who guesses `CHANGE-ME` can make."""
    with pytest.raises(SettingsError, match="POSTAL_API_TOKEN"):
        load_settings({**CONFIG, **SECRET})


def test_the_prometheus_annotations_scrape_a_metrics_path_open_to_them() -> None:
    """Prometheus's annotation-based scrape sends no credentials: with the manifests' settings
    /metrics must be served, and not behind the token."""
    annotations = DEPLOYMENT["spec"]["template"]["metadata"]["annotations"]
    settings = load_settings(environment())
    assert settings.postal_metrics_access == "open"
    app = create_app(settings)
    scope = {
        "type": "http", "method": "GET", "path": annotations["prometheus.io/path"],
        "root_path": "", "headers": [],
    }  # fmt: skip
    assert any(route.matches(scope)[0] == Match.FULL for route in app.router.routes)
    assert annotations["prometheus.io/port"] == str(CONTAINER["ports"][0]["containerPort"])


def test_the_configuration_comes_from_the_configmap_and_the_secret() -> None:
    sources = [
        source.get("configMapRef", source.get("secretRef"))["name"]
        for source in CONTAINER["envFrom"]
    ]
    assert sources == ["postal-config", "postal-secrets"]
    assert MIGRATE["envFrom"] == CONTAINER["envFrom"]


def test_secrets_are_placeholders_only_in_the_secret() -> None:
    assert the("Secret", "postal-secrets")["type"] == "Opaque"
    for name, value in SECRET.items():
        assert "CHANGE-ME" in value, f"{name} must be a marked placeholder"
    assert the("Secret", "postal-redis-auth")["stringData"]["password"] == "CHANGE-ME"
    secret_names = {"POSTAL_API_TOKEN", "DATABASE_URL", "READ_REDIS_URL", "WRITE_REDIS_URL"}
    assert secret_names <= set(SECRET)
    assert not secret_names & set(CONFIG), "secrets belong in the Secret"


# -- capacity: pools per process, multiplied ---------------------------------------------------


def workers() -> int:
    args = CONTAINER["args"]
    return int(args[args.index("--workers") + 1]) if "--workers" in args else 1


def redis_maxclients() -> int:
    args = the("StatefulSet", "postal-redis")["spec"]["template"]["spec"]["containers"][0]["args"]
    return int(args[args.index("--maxclients") + 1])


def test_redis_connections_at_max_replicas_fit_maxclients() -> None:
    settings = load_settings(environment())
    per_process = settings.read_redis_pool_size + settings.write_redis_pool_size
    worst = per_process * workers() * HPA["spec"]["maxReplicas"]
    assert worst <= redis_maxclients() * REDIS_HEADROOM


def test_database_connections_at_max_replicas_fit_max_connections() -> None:
    settings = load_settings(environment())
    worst = settings.database_pool_size * workers() * HPA["spec"]["maxReplicas"]
    assert worst <= POSTGRES_MAX_CONNECTIONS - POSTGRES_RESERVED


# -- the objects tie together ---------------------------------------------------------------------


def test_the_hpa_owns_the_replica_count() -> None:
    assert "replicas" not in DEPLOYMENT["spec"]
    assert HPA["apiVersion"] == "autoscaling/v2"
    target = HPA["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        "apps/v1",
        "Deployment",
        "postal",
    )
    assert 2 <= HPA["spec"]["minReplicas"] <= HPA["spec"]["maxReplicas"]


def test_selectors_match_the_pods() -> None:
    pod_labels = DEPLOYMENT["spec"]["template"]["metadata"]["labels"]
    for kind, name in (("Service", "postal"), ("PodDisruptionBudget", "postal")):
        spec = the(kind, name)["spec"]
        selector = spec["selector"].get("matchLabels", spec["selector"])
        assert selector.items() <= pod_labels.items(), kind
    assert DEPLOYMENT["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_the_redis_urls_name_the_headless_services_pod() -> None:
    service = the("Service", "postal-redis")
    redis = the("StatefulSet", "postal-redis")
    assert service["spec"]["clusterIP"] == "None"
    assert redis["spec"]["serviceName"] == service["metadata"]["name"]
    pod_labels = redis["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    stable_name = f"{redis['metadata']['name']}-0.{service['metadata']['name']}"
    port = service["spec"]["ports"][0]["port"]
    for name in ("READ_REDIS_URL", "WRITE_REDIS_URL"):
        url = urlsplit(SECRET[name])
        assert (url.hostname, url.port) == (stable_name, port), name


def test_redis_requires_the_password_of_its_secret() -> None:
    container = the("StatefulSet", "postal-redis")["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    (env,) = container["env"]
    assert env["valueFrom"]["secretKeyRef"] == {"name": "postal-redis-auth", "key": "password"}
    # Evicting by nearest expiry keeps the day-long generation counters of the stale-fill guard
    # while minutes-long values go first (an allkeys-* policy could evict a counter).
    assert args[args.index("--maxmemory-policy") + 1] == "volatile-ttl"


def test_the_image_is_tagged_with_postals_version() -> None:
    images = {CONTAINER["image"], MIGRATE["image"]}
    assert images == {f"postal:{__version__}"}
