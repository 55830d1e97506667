"""The cluster deployment, checked statically (no containers or Kubernetes here): the manifests parse into
Kubernetes objects, reference images this repository builds and variables that exist, and the list of
variables each component reads matches the code."""

from __future__ import annotations

import ast
import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY = REPO_ROOT / "serving" / "deploy"
AIRFLOW_PYTHON = REPO_ROOT / ".venvs" / "airflow" / "bin" / "python"
# Where the worker image puts the repository (serving/deploy/worker.Dockerfile WORKDIR).
IMAGE_ROOT = "/opt/invoice-mlops"
PLATFORM_PREFIXES = ("INVOICE_", "LABEL_STUDIO_")


def environment() -> dict[str, dict[str, str]]:
    """component -> {variable: what it is}, from serving/deploy/environment.yaml."""
    components = yaml.safe_load((DEPLOY / "environment.yaml").read_text())
    return {name: spec["variables"] for name, spec in components.items()}


def manifests() -> list[dict]:
    return [
        document
        for path in sorted((DEPLOY / "kubernetes").glob("*.yaml"))
        for document in yaml.safe_load_all(path.read_text())
        if document
    ]


def code_text() -> str:
    """The platform's code: what its components run."""
    paths = [*REPO_ROOT.glob("training/*.py"), *REPO_ROOT.glob("serving/*.py"), *REPO_ROOT.glob("dags/*.py")]
    return "\n".join(path.read_text() for path in paths)


def test_the_platforms_variables_are_the_ones_its_code_reads():
    listed = {name for variables in environment().values() for name in variables}
    code = code_text()
    read = set(re.findall(r"\b(INVOICE_[A-Z_]+)\b", code)) - {"INVOICE_TEST_POSTGRES_URL"}
    platform_listed = {name for name in listed if name.startswith(PLATFORM_PREFIXES)}
    assert sorted(name for name in platform_listed if name not in code) == []
    assert sorted(read - listed) == []


def test_airflow_variables_name_real_configuration_options():
    """Each AIRFLOW__SECTION__KEY is an option Airflow (with its installed providers) documents."""
    names = sorted(
        {
            name
            for variables in [*environment().values(), *(doc.get("data") or {} for doc in manifests())]
            for name in variables
            if name.startswith("AIRFLOW__")
        }
    )
    pairs = [name.removeprefix("AIRFLOW__").lower().split("__", 1) for name in names]
    script = (
        "import json, sys\nfrom airflow.configuration import conf\n"
        "d = conf.configuration_description\n"
        "print(json.dumps([k in d.get(s, {}).get('options', {}) for s, k in json.loads(sys.argv[1])]))"
    )
    result = subprocess.run(
        [str(AIRFLOW_PYTHON), "-c", script, json.dumps(pairs)], capture_output=True, text=True, check=True
    )
    known = json.loads(result.stdout.strip().splitlines()[-1])
    assert [name for name, ok in zip(names, known, strict=True) if not ok] == []


def test_manifests_parse_into_kubernetes_objects_and_the_pod_template_into_airflows():
    """The pod template through Airflow's own reader (what the KubernetesExecutor does with it); every other
    manifest through the Kubernetes client's models."""
    script = (
        "import json, sys, yaml\n"
        "from kubernetes.client import ApiClient\n"
        "from airflow.providers.cncf.kubernetes.pod_generator import PodGenerator\n"
        "pod = PodGenerator.deserialize_model_file(sys.argv[1])\n"
        "api, kinds = ApiClient(), []\n"
        "for path in sys.argv[2:]:\n"
        "    for doc in yaml.safe_load_all(open(path)):\n"
        "        model = api._ApiClient__deserialize(doc, 'V1' + doc['kind'])\n"
        "        kinds.append(type(model).__name__)\n"
        "print(json.dumps({'base': [c.name for c in pod.spec.containers], 'image': pod.spec.containers[0].image,"
        " 'kinds': kinds}))"
    )
    kubernetes = DEPLOY / "kubernetes"
    others = [str(p) for p in sorted(kubernetes.glob("*.yaml")) if p.name != "airflow-ml-pod-template.yaml"]
    result = subprocess.run(
        [str(AIRFLOW_PYTHON), "-c", script, str(kubernetes / "airflow-ml-pod-template.yaml"), *others],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    parsed = json.loads(result.stdout.strip().splitlines()[-1])
    assert parsed["base"] == ["base"], "the KubernetesExecutor runs the task in the container named base"
    assert sorted(parsed["kinds"]) == ["V1ConfigMap", "V1Deployment", "V1Secret", "V1Service"]


def test_manifests_reference_images_and_variables_that_exist():
    documents = manifests()
    bento_name = yaml.safe_load((REPO_ROOT / "serving" / "bentofile.yaml").read_text())["name"]
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert f"--image-tag {bento_name}:" in makefile and "-t invoice-mlops-worker:" in makefile
    images = {
        container["image"].split(":")[0] for document in documents for container in _containers(document)
    }
    assert images == {bento_name, "invoice-mlops-worker"}

    config = next(d for d in documents if d["kind"] == "ConfigMap")
    secret = next(d for d in documents if d["kind"] == "Secret")
    variables = environment()
    everyone = {name for names in variables.values() for name in names}
    assert sorted((set(config["data"]) | set(secret["stringData"])) - everyone) == []
    for document in documents:
        for container in _containers(document):
            component = "bentoml" if container["image"].startswith(bento_name) else "airflow"
            for entry in container.get("env", []):
                assert entry["name"] in variables[component], (component, entry["name"])
                reference = entry.get("valueFrom", {})
                if "configMapKeyRef" in reference:
                    assert reference["configMapKeyRef"]["key"] in config["data"]
                if "secretKeyRef" in reference:
                    assert reference["secretKeyRef"]["key"] in secret["stringData"]
    template = config["data"]["AIRFLOW__KUBERNETES_EXECUTOR__POD_TEMPLATE_FILE"]
    assert (REPO_ROOT / template.removeprefix(f"{IMAGE_ROOT}/")).exists(), template


def _containers(document: dict) -> list[dict]:
    spec = document.get("spec", {})
    spec = spec.get("template", {}).get("spec", spec)
    return spec.get("containers", [])


def test_probes_and_worker_image_use_what_exists():
    source = (REPO_ROOT / "serving" / "service.py").read_text()
    open_paths = ast.literal_eval(re.search(r"^OPEN_PATHS = (\{.*\})$", source, re.M).group(1))
    deployment = next(d for d in manifests() if d["kind"] == "Deployment")
    (container,) = _containers(deployment)
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["path"] in open_paths
    dockerfile = (DEPLOY / "worker.Dockerfile").read_text()
    assert f"WORKDIR {IMAGE_ROOT}" in dockerfile
    for line in dockerfile.splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (REPO_ROOT / source).exists(), line
    for lock in re.findall(r"uv pip sync (\S+)", dockerfile):
        assert (REPO_ROOT / lock).exists(), lock


@pytest.mark.parametrize("profile", ["embedded", "production"])
def test_make_resolves_each_profile(profile):
    """`make -n up PROFILE=...` plans the profile's stores and executor (and nothing else is needed to switch)."""
    result = subprocess.run(
        ["make", "-n", "up", f"PROFILE={profile}"], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    plan = result.stdout
    if profile == "production":
        assert (
            "invoice db create postgresql+psycopg2://" in plan and "dag-processor worker-1 worker-2;" in plan
        )
        assert "--backend-store-uri postgresql+psycopg2://" in plan and "--serve-artifacts" in plan
    else:
        assert "invoice db create" not in plan and "dag-processor ;" in plan
        assert "--backend-store-uri sqlite:///" in plan


def test_an_unknown_profile_is_refused():
    result = subprocess.run(
        ["make", "-n", "up", "PROFILE=staging"], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode != 0 and "PROFILE is embedded or production" in result.stderr
