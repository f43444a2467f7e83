"""The Kubernetes manifest of the HTTP service (deploy/k8s/imgclf-serve.yaml) against the service itself.

Nothing is applied to a cluster here (there is none): the manifest is parsed with ``yaml.safe_load_all``
and compared with the files it must agree with, read rather than copied: the Dockerfile (its CMD, port
and user id), imgclf/ship/serve.py (the /health route, the environment variables it reads, the capture
modes) and params.yaml's ``serve`` section (the capture budget the log volume must hold). It also checks
the manifest's own cross-references: probes and Services name the container port, the Services and the
autoscaler find the workload, resource requests fit under the limits.
"""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath

import pytest
import yaml

from imgclf.io import PipelineError
from imgclf.params import load_section
from imgclf.ship.prediction_log import CAPTURE
from imgclf.ship.serve import create_app

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "deploy" / "k8s" / "imgclf-serve.yaml"
DOCKERFILE = (ROOT / "Dockerfile").read_text()
SERVE_SOURCE = (ROOT / "imgclf" / "ship" / "serve.py").read_text()

DOCUMENTS = [document for document in yaml.safe_load_all(MANIFEST.read_text()) if document]
WORKLOADS = [d for d in DOCUMENTS if d["kind"] in ("StatefulSet", "Deployment")]
WORKLOAD = WORKLOADS[0]
POD = WORKLOAD["spec"]["template"]["spec"]
CONTAINER = POD["containers"][0]
ENV = {variable["name"]: variable.get("value") for variable in CONTAINER.get("env", [])}
SERVICES = [d for d in DOCUMENTS if d["kind"] == "Service"]
HPA = next(d for d in DOCUMENTS if d["kind"] == "HorizontalPodAutoscaler")
PROBES = {name: CONTAINER[name] for name in ("startupProbe", "readinessProbe", "livenessProbe") if name in CONTAINER}


def dockerfile_cmd() -> list[str]:
    """The JSON array of the Dockerfile's CMD line (not the HEALTHCHECK's shell-form CMD)."""
    found = re.search(r"^CMD (\[.*\])\s*$", DOCKERFILE, re.MULTILINE)
    assert found, "the Dockerfile has no exec-form CMD [...] line"
    return json.loads(found.group(1))


def cpu_cores(quantity: str | int | float) -> float:
    """A Kubernetes CPU quantity in cores: "500m" -> 0.5, "2" -> 2."""
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


BYTE_SUFFIXES = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def byte_count(quantity: str | int) -> float:
    """A Kubernetes memory or storage quantity in bytes: "512Mi", "1Gi", "500M", "1000"."""
    found = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]i|[kMGT])?", str(quantity))
    assert found, f"cannot read the quantity {quantity!r}"
    number, suffix = found.groups()
    return float(number) * BYTE_SUFFIXES.get(suffix, 1)


def test_the_quantity_parsers_read_kubernetes_units():
    assert cpu_cores("500m") == 0.5 and cpu_cores("2") == 2 and cpu_cores(1) == 1
    assert byte_count("512Mi") == 512 * 2**20 and byte_count("1Gi") == 2**30 and byte_count("2G") == 2e9


def test_the_manifest_holds_one_workload_two_services_and_an_autoscaler():
    assert len(WORKLOADS) == 1, [d["kind"] for d in DOCUMENTS]
    assert WORKLOAD["kind"] == "StatefulSet", "each pod needs its own log volume: volumeClaimTemplates"
    assert {d["kind"] for d in DOCUMENTS} == {"StatefulSet", "Service", "HorizontalPodAutoscaler"}


def test_the_command_is_the_dockerfiles_cmd():
    assert CONTAINER["command"] == dockerfile_cmd()


def test_the_container_port_is_the_one_the_command_listens_on():
    cmd = dockerfile_cmd()
    ports = CONTAINER["ports"]
    assert len(ports) == 1 and ports[0]["name"] == "http"
    assert ports[0]["containerPort"] == int(cmd[cmd.index("--port") + 1])


def test_the_probes_ask_the_services_health_route_on_the_named_port():
    routes = {(route.path, method) for route in create_app().routes for method in getattr(route, "methods", ())}
    port_name = CONTAINER["ports"][0]["name"]
    assert {"readinessProbe", "livenessProbe"} <= set(PROBES)
    for name, probe in PROBES.items():
        path = probe["httpGet"]["path"]
        assert path == "/health", name
        assert (path, "GET") in routes, f"{name}: the service has no GET {path}"
        assert probe["httpGet"]["port"] == port_name, f"{name} must name the container port {port_name!r}"


def test_liveness_is_more_patient_than_readiness():
    """A slow model load or a busy pod is taken out of the Service, not restarted."""
    readiness, liveness = PROBES["readinessProbe"], PROBES["livenessProbe"]
    assert liveness.get("initialDelaySeconds", 0) > readiness.get("initialDelaySeconds", 0)

    def patience(probe: dict) -> int:  # seconds of failures before the kubelet acts (defaults 10 s x 3)
        return probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3)

    assert patience(liveness) > patience(readiness)


def test_every_imgclf_variable_is_one_the_service_reads():
    read = set(re.findall(r'os\.environ\.get\("(IMGCLF_\w+)"', SERVE_SOURCE))
    assert {"IMGCLF_LOG", "IMGCLF_CAPTURE"} <= read, "serve.py no longer reads the variables the manifest sets"
    named = {name for name in ENV if name.startswith("IMGCLF_")}
    assert named, "the manifest sets no IMGCLF_ variable"
    assert named <= read, f"serve.py never reads {sorted(named - read)}"


def test_the_capture_mode_is_one_the_log_accepts():
    assert ENV["IMGCLF_CAPTURE"] in CAPTURE


def test_the_log_lives_on_the_pods_own_volume():
    log_folder = PurePosixPath(ENV["IMGCLF_LOG"]).parent
    mounts = [m for m in CONTAINER["volumeMounts"] if log_folder.is_relative_to(m["mountPath"])]
    assert mounts, f"IMGCLF_LOG's folder {log_folder} is on no volume mount: the log would die with the pod"
    claims = {template["metadata"]["name"] for template in WORKLOAD["spec"].get("volumeClaimTemplates", [])}
    assert mounts[0]["name"] in claims, "the log's volume must come from volumeClaimTemplates: one per pod"


def test_the_log_volume_is_read_write_once_and_holds_the_capture_budget():
    """SQLite's WAL and the flock beside the log need a local filesystem; the kept images need their budget."""
    capture_max_mb = load_section("serve", ROOT / "params.yaml")["capture_max_mb"]
    for template in WORKLOAD["spec"]["volumeClaimTemplates"]:
        spec = template["spec"]
        assert spec["accessModes"] == ["ReadWriteOnce"]
        storage = byte_count(spec["resources"]["requests"]["storage"])
        assert storage > capture_max_mb * 2**20, f"{storage:.0f} bytes hold no more than {capture_max_mb} MB"


def test_the_pod_runs_as_the_dockerfiles_user():
    found = re.search(r"useradd\b.*--uid (\d+)", DOCKERFILE)
    assert found, "the Dockerfile creates no user with useradd --uid"
    context = POD["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["runAsUser"] == int(found.group(1))
    assert isinstance(context.get("fsGroup"), int), "fsGroup makes the log volume writable by that user"


@pytest.mark.parametrize("kind", ["requests", "limits"])
def test_resources_name_cpu_and_memory(kind):
    assert {"cpu", "memory"} <= set(CONTAINER["resources"][kind])


def test_resource_requests_fit_under_the_limits():
    requests, limits = CONTAINER["resources"]["requests"], CONTAINER["resources"]["limits"]
    assert cpu_cores(requests["cpu"]) <= cpu_cores(limits["cpu"])
    assert byte_count(requests["memory"]) <= byte_count(limits["memory"])


def test_the_services_find_the_pods_and_their_port():
    labels = WORKLOAD["spec"]["template"]["metadata"]["labels"]
    assert WORKLOAD["spec"]["selector"]["matchLabels"].items() <= labels.items()
    port_name = CONTAINER["ports"][0]["name"]
    for service in SERVICES:
        assert service["spec"]["selector"].items() <= labels.items(), service["metadata"]["name"]
        assert [port["targetPort"] for port in service["spec"]["ports"]] == [port_name]


def test_the_cluster_service_listens_on_80_and_the_statefulset_names_a_headless_one():
    cluster = [s for s in SERVICES if s["spec"].get("clusterIP") != "None"]
    assert len(cluster) == 1 and cluster[0]["spec"].get("type", "ClusterIP") == "ClusterIP"
    assert [port["port"] for port in cluster[0]["spec"]["ports"]] == [80]
    headless = {s["metadata"]["name"] for s in SERVICES if s["spec"].get("clusterIP") == "None"}
    assert WORKLOAD["spec"]["serviceName"] in headless


def test_feedback_reaches_the_pod_that_answered():
    """POST /v1/feedback finds a prediction only in the log of the pod that made it (404 elsewhere)."""
    assert '@app.post("/v1/feedback")' in SERVE_SOURCE
    cluster = next(s for s in SERVICES if s["spec"].get("clusterIP") != "None")
    if HPA["spec"]["maxReplicas"] > 1:
        assert cluster["spec"].get("sessionAffinity") == "ClientIP"


def test_the_autoscaler_targets_the_workload_and_owns_its_replicas():
    target = HPA["spec"]["scaleTargetRef"]
    assert HPA["apiVersion"] == "autoscaling/v2"
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        WORKLOAD["apiVersion"],
        WORKLOAD["kind"],
        WORKLOAD["metadata"]["name"],
    )
    assert 1 <= HPA["spec"]["minReplicas"] <= HPA["spec"]["maxReplicas"]
    assert "replicas" not in WORKLOAD["spec"], "a fixed replica count is reset by every kubectl apply"
    cpu = [m["resource"] for m in HPA["spec"]["metrics"] if m["type"] == "Resource" and m["resource"]["name"] == "cpu"]
    assert cpu and 0 < cpu[0]["target"]["averageUtilization"] <= 100


def test_the_service_sizes_its_pool_by_the_containers_cpu_limit_not_the_nodes_cores(tmp_path, monkeypatch):
    """A pod limited to 2 CPUs on a 64-core node: one model instance per core it may use."""
    import os

    from imgclf.parallel import usable_cpus
    from imgclf.ship.serve import Settings

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    v2, v1, none = tmp_path / "v2", tmp_path / "v1", tmp_path / "none"
    v2.mkdir()
    (v2 / "cpu.max").write_text(f"{int(cpu_cores(CONTAINER['resources']['limits']['cpu']) * 100000)} 100000\n")
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("150000\n")  # 1.5 CPUs: rounded up
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    none.mkdir()
    (none / "cpu.max").write_text("max 100000\n")
    assert usable_cpus(v2) == cpu_cores(CONTAINER["resources"]["limits"]["cpu"]) == 2
    assert usable_cpus(v1) == 2 and usable_cpus(none) == 64 and usable_cpus(tmp_path / "missing") == 64

    monkeypatch.chdir(tmp_path)  # no params.yaml: the service's defaults, then the environment
    monkeypatch.setenv("IMGCLF_WORKERS", "3")
    assert Settings.load().workers == 3
    monkeypatch.setenv("IMGCLF_WORKERS", "two")
    with pytest.raises(PipelineError, match="IMGCLF_WORKERS='two'"):
        Settings.load()


def test_the_training_job_example_parses_and_runs_commands_that_exist():
    """deploy/k8s/tfjob.yaml (not applied here: no cluster) names modules and stages of this repository."""
    import importlib.util

    text = (ROOT / "deploy" / "k8s" / "tfjob.yaml").read_text()
    job = yaml.safe_load(text)
    assert job["kind"] == "TFJob" and set(job["spec"]["tfReplicaSpecs"]) == {"Chief", "Worker"}
    dvc_stages = set(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])
    for replica in job["spec"]["tfReplicaSpecs"].values():
        container = replica["template"]["spec"]["containers"][0]
        assert container["name"] == "tensorflow"  # the operator's convention
        script = " ".join(container["args"])
        for module in re.findall(r"python -m ([\w.]+)", script):
            assert importlib.util.find_spec(module) is not None, module
        for stages in re.findall(r"dvc (?:pull|repro --single-item) ([\w -]+?)(?: &&|$)", script):
            assert set(stages.split()) <= dvc_stages, stages
    for path in re.findall(r"imgclf/[\w/]+\.py", text):  # the comments' pointers into the code
        assert (ROOT / path).is_file(), path
