"""deploy/kubernetes as kubectl renders it: every variable it sets is one the gateway reads, and a pod is
given the time its drain needs.

The overlays are rendered with kubectl's kustomize (no cluster needed) from a copy of the tree whose
secrets.env is the committed example. Schema validation and checkov run in .ci/kubernetes.
"""

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from django.conf import settings

from tests.conftest import require

BASE_DIR = Path(settings.BASE_DIR)
MANIFESTS = BASE_DIR / "deploy" / "kubernetes"
OVERLAYS = sorted(path.name for path in (MANIFESTS / "overlays").iterdir() if path.is_dir())
# After the drain, a worker closes what is left (at least 1 s) and its lifespan waits up to 15 s for the
# request log's last rows (config/asgi.py); the drain's own final flush (proxy/server/drain.py) only runs long
# when the database is gone, and then the rows are lost anyway.
SHUTDOWN_AFTER_DRAIN = 1 + 15
# env("NAME", ...), env.int("NAME", ...), env.list("NAME", ...) and so on in config/settings.py.
SETTINGS_READ = re.compile(r"\benv(?:\.\w+)?\(\s*\"([A-Z][A-Z0-9_]*)\"")
# os.environ["NAME"], os.environ.get("NAME") elsewhere in the gateway's code.
ENVIRON_READ = re.compile(r"os\.environ(?:\.get\(|\[)\s*\"([A-Z][A-Z0-9_]*)\"")
POD_KINDS = {"Deployment", "Job", "CronJob"}


def kubectl() -> str:
    """A kubectl whose kustomize is v5 (.ci/kubectl finds or installs one in CI)."""
    candidate = os.environ.get("SLUICE_KUBECTL") or shutil.which("kubectl") or ""
    version = ""
    if candidate:
        version = subprocess.run([candidate, "version", "--client"], capture_output=True, text=True).stdout
    require(
        "Kustomize Version: v5." in version, "kubectl with kustomize v5 not found (.ci/kubectl installs one)"
    )
    return candidate


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    """Every overlay's objects, by overlay name."""
    tool = kubectl()
    tree = tmp_path_factory.mktemp("kubernetes") / "tree"
    shutil.copytree(MANIFESTS, tree, ignore=shutil.ignore_patterns("secrets.env"))
    objects = {}
    for name in OVERLAYS:
        overlay = tree / "overlays" / name
        shutil.copy(overlay / "secrets.env.example", overlay / "secrets.env")
        result = subprocess.run([tool, "kustomize", str(overlay)], capture_output=True, text=True)
        assert result.returncode == 0, f"overlay {name} does not render: {result.stderr}"
        assert "Warning" not in result.stderr, (
            f"overlay {name} uses deprecated kustomize fields: {result.stderr}"
        )
        objects[name] = [item for item in yaml.safe_load_all(result.stdout) if item]
    return objects


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [item for item in objects if item["kind"] == kind and name in (None, item["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_spec(item: dict[str, Any]) -> dict[str, Any]:
    spec = item["spec"]["jobTemplate"]["spec"] if item["kind"] == "CronJob" else item["spec"]
    return spec["template"]["spec"]


def variables_set(objects: list[dict[str, Any]], item: dict[str, Any]) -> dict[str, str]:
    """Every environment variable the containers of a workload get: the keys of the ConfigMaps and Secrets
    they take whole (envFrom) and their own env entries."""
    names: dict[str, str] = {}
    spec = pod_spec(item)
    for container in spec.get("initContainers", []) + spec["containers"]:
        for source in container.get("envFrom", []):
            kind, ref = (
                ("ConfigMap", source["configMapRef"])
                if "configMapRef" in source
                else ("Secret", source["secretRef"])
            )
            names.update(
                dict.fromkeys(one(objects, kind, ref["name"]).get("data", {}), f"{kind} {ref['name']}")
            )
        names.update({entry["name"]: f"env of {container['name']}" for entry in container.get("env", [])})
    return names


def variables_read() -> set[str]:
    """What the gateway reads from the environment: config/settings.py, and os.environ in its packages."""
    names = set(SETTINGS_READ.findall((BASE_DIR / "config" / "settings.py").read_text()))
    assert {"SECRET_KEY", "DATABASE_URL", "SLUICE_DRAIN_SECONDS"} <= names, "settings.py no longer parses"
    for package in ("config", "proxy", "providers", "settings_app"):
        for source in (BASE_DIR / package).rglob("*.py"):
            names.update(ENVIRON_READ.findall(source.read_text()))
    return names


def configuration(objects: list[dict[str, Any]]) -> dict[str, str]:
    deployment = one(objects, "Deployment", "sluice")
    refs = [
        source["configMapRef"]["name"]
        for source in pod_spec(deployment)["containers"][0]["envFrom"]
        if "configMapRef" in source
    ]
    assert len(refs) == 1
    return one(objects, "ConfigMap", refs[0])["data"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_workloads_set_only_variables_the_gateway_reads(rendered: dict, overlay: str) -> None:
    objects = rendered[overlay]
    read = variables_read()
    readme = (BASE_DIR / "README.md").read_text()
    workloads = [item for item in objects if item["kind"] in POD_KINDS]
    assert {item["kind"] for item in workloads} == POD_KINDS
    for item in workloads:
        names = variables_set(objects, item)
        assert {"SECRET_KEY", "DATABASE_URL", "REDIS_URL", "SLUICE_DRAIN_SECONDS"} <= set(names)
        unknown = {name: origin for name, origin in names.items() if name not in read}
        assert not unknown, (
            f"{item['kind']} {item['metadata']['name']} sets what the gateway never reads: {unknown}"
        )
        undocumented = sorted(name for name in names if f"`{name}`" not in readme)
        assert not undocumented, f"not in the README's configuration table: {undocumented}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_termination_grace_covers_the_pause_and_the_drain(rendered: dict, overlay: str) -> None:
    objects = rendered[overlay]
    spec = pod_spec(one(objects, "Deployment", "sluice"))
    gateway = spec["containers"][0]
    command = gateway["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pause = float(command[1])
    assert pause >= 3, "the endpoint needs a few seconds to leave the ingress controller's list"
    drain = float(configuration(objects).get("SLUICE_DRAIN_SECONDS", settings.SLUICE_DRAIN_SECONDS))
    needed = pause + drain + SHUTDOWN_AFTER_DRAIN
    grace = spec["terminationGracePeriodSeconds"]
    assert grace >= needed, (
        f"terminationGracePeriodSeconds {grace} < preStop {pause:g} s + SLUICE_DRAIN_SECONDS {drain:g} s + "
        f"{SHUTDOWN_AFTER_DRAIN} s of shutdown: pods would be killed mid-drain"
    )
    assert grace <= needed + 30, (
        f"terminationGracePeriodSeconds {grace} is far above what the drain takes ({needed:g} s)"
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gateway_probes_migrations_and_user(rendered: dict, overlay: str) -> None:
    objects = rendered[overlay]
    spec = pod_spec(one(objects, "Deployment", "sluice"))
    gateway = spec["containers"][0]
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # The Job migrates; the gateway waits for it and never migrates itself.
    assert gateway["command"][:3] == ["python", "manage.py", "serve"] and "--no-migrate" in gateway["command"]
    assert "manage.py migrate --check" in spec["initContainers"][0]["command"][-1]
    job = pod_spec(one(objects, "Job", "sluice-migrate"))
    assert "manage.py migrate" in job["containers"][0]["command"][-1]
    uid = re.search(r"useradd --uid (\d+)", (BASE_DIR / "Dockerfile").read_text())
    assert uid and spec["securityContext"]["runAsUser"] == int(uid.group(1))
    assert spec["securityContext"]["runAsNonRoot"] is True
    # A read-only root: SLUICE_DATA_DIR and /tmp are the volumes the gateway writes to.
    assert gateway["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {mount["mountPath"] for mount in gateway["volumeMounts"]}
    assert {configuration(objects)["SLUICE_DATA_DIR"], "/tmp"} <= mounts


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ingress_keeps_websockets_and_streams_open(rendered: dict, overlay: str) -> None:
    annotations = one(rendered[overlay], "Ingress")["metadata"]["annotations"]
    prefix = "nginx.ingress.kubernetes.io/"
    for timeout in ("proxy-read-timeout", "proxy-send-timeout"):
        assert int(annotations[prefix + timeout]) >= settings.SLUICE_WS_MAX_AGE, timeout
    assert annotations[prefix + "proxy-buffering"] == "off"
    # The host the Ingress serves is the one the gateway admits (ALLOWED_HOSTS from SLUICE_PUBLIC_URL).
    public = urlsplit(configuration(rendered[overlay])["SLUICE_PUBLIC_URL"]).hostname
    spec = one(rendered[overlay], "Ingress")["spec"]
    assert {rule["host"] for rule in spec["rules"]} == {public} == set(spec["tls"][0]["hosts"])


def test_production_is_scraped_with_the_metrics_token(rendered: dict) -> None:
    objects = rendered["production"]
    monitor = one(objects, "ServiceMonitor")
    credentials = monitor["spec"]["endpoints"][0]["authorization"]["credentials"]
    secret = one(objects, "Secret", credentials["name"])  # the generated name, with its hash
    assert credentials["key"] in secret["data"] and credentials["key"] in variables_read()
