"""The container image and the Kubernetes and KubeRay manifests, checked offline.

No Docker engine or cluster exists here, so each file is held to what can be checked without
one: hadolint for the Dockerfile, the Kubernetes JSON schemas (kubernetes-validate) for every
manifest and for what Kustomize renders, and, below the schemas, the rules the API server and
the kubelet apply that a schema cannot express (a mistake there is accepted by `kubectl apply`
and only fails, or silently misbehaves, in the cluster).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from batch_predict.cli import predict

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
KUBERNETES = ROOT / "deploy" / "kubernetes"
SINGLE_JOB = KUBERNETES / "batch-predict.yaml"
EXAMPLE_OVERLAY = ROOT / "deploy" / "overlays" / "example"
RAYJOB = ROOT / "deploy" / "ray" / "rayjob.yaml"

#: The oldest Kubernetes with per-index retries on by default, and the newest bundled schemas.
KUBERNETES_VERSIONS = ("1.29", "1.37")
CONTAINER = "batch-predict"
GPU = "nvidia.com/gpu"


def _tool(name: str) -> str:
    """A binary that a package of the `deploy` extra installed beside this Python."""
    path = Path(sysconfig.get_path("scripts")) / name
    assert path.is_file(), f"{name} not found in {path.parent}: install the `deploy` extra"
    return str(path)


def _load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _kustomize(directory: Path) -> list[dict[str, Any]]:
    result = subprocess.run([_tool("kubectl"), "kustomize", str(directory)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def rendered_base() -> list[dict[str, Any]]:
    return _kustomize(KUBERNETES)


@pytest.fixture(scope="module")
def rendered_example() -> list[dict[str, Any]]:
    return _kustomize(EXAMPLE_OVERLAY)


@pytest.fixture(scope="module")
def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _pins() -> dict[str, str]:
    """constraints.txt as {normalized name: exact version}."""
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*==\s*(\S+)\s*", line)
        if match:
            pins[_normalize(match[1])] = match[2]
    return pins


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> str:
    return _normalize(re.match(r"[A-Za-z0-9_.-]+", requirement)[0])


# --- Dockerfile -------------------------------------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    """The Dockerfile as (INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    logical, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        if current.strip():
            logical.append(current.strip())
        current = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1]) for text in logical]


def _image_user() -> tuple[int, int]:
    users = [args for instruction, args in _instructions() if instruction == "USER"]
    uid, gid = users[-1].split(":")
    return int(uid), int(gid)


def _image_extras() -> set[str]:
    """The pyproject extras the image's install step can name, whatever the build arguments."""
    run = " ".join(args for instruction, args in _instructions() if instruction == "RUN")
    extras = set(re.search(r"\bextras=([\w,-]+);", run)[1].split(","))
    extras |= set(re.findall(r"\btf_extra=([\w-]+)", run))
    extras |= set(re.findall(r'extras="\$extras,([\w-]+)"', run))
    return extras


def test_dockerfile_passes_hadolint_with_no_finding_at_any_level():
    result = subprocess.run(
        [_tool("hadolint"), "--failure-threshold", "style", "--format", "json", str(DOCKERFILE)],
        capture_output=True, text=True,
    )
    assert json.loads(result.stdout) == [], result.stdout
    assert result.returncode == 0


def test_image_entry_point_is_the_batch_predict_command(pyproject):
    entry_points = [args for instruction, args in _instructions() if instruction == "ENTRYPOINT"]
    assert [json.loads(args) for args in entry_points] == [["batch-predict"]]
    assert "batch-predict" in pyproject["project"]["scripts"]


def test_image_runs_as_a_fixed_non_root_user():
    uid, gid = _image_user()
    assert uid > 0 and gid > 0


def test_image_base_is_pinned_to_a_python_patch_release():
    args = dict(
        args.split("=", 1) for instruction, args in _instructions() if instruction == "ARG" and "=" in args
    )
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?", args["PYTHON_IMAGE"])
    assert ("FROM", "${PYTHON_IMAGE}") in _instructions()


def test_the_suite_runs_on_the_python_the_image_ships():
    # What ships is what is tested: features that differ between Pythons (runtime-checkable
    # protocols, say) are exercised on the image's. CI sets BATCH_PREDICT_CI (.ci/run).
    if not os.environ.get("BATCH_PREDICT_CI"):
        pytest.skip("checked in CI only: a developer may run the suite on another Python")
    args = dict(
        args.split("=", 1) for instruction, args in _instructions() if instruction == "ARG" and "=" in args
    )
    major, minor = re.match(r"python:(\d+)\.(\d+)\.", args["PYTHON_IMAGE"]).groups()
    assert sys.version_info[:2] == (int(major), int(minor)), f"tests run on {sys.version}, the image ships {args['PYTHON_IMAGE']}"


def test_every_package_the_image_can_install_is_pinned_in_constraints(pyproject):
    extras = pyproject["project"]["optional-dependencies"]
    named = _image_extras()
    assert {"torch", "onnx", "cloud", "nvimgcodec", "tf", "tf-gpu", "ray"} <= named
    assert named <= set(extras), f"the Dockerfile names extras pyproject.toml lacks: {named - set(extras)}"
    pins = _pins()
    own_name = pyproject["project"]["name"]  # an extra may include another extra of this project
    unpinned = {_requirement_name(r) for extra in named for r in extras[extra]} - set(pins) - {own_name}
    assert not unpinned, f"not pinned in constraints.txt: {sorted(unpinned)}"


def test_image_is_installed_with_the_constraints():
    run = " ".join(args for instruction, args in _instructions() if instruction == "RUN")
    installs = re.findall(r"pip install ([^;]+);", run)
    assert installs and all("-c /tmp/src/constraints.txt" in install for install in installs)


def test_dockerignore_keeps_only_what_the_install_needs():
    lines = [ln for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln and not ln.startswith("#")]
    assert lines[0] == "*"
    kept = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    assert kept == {"pyproject.toml", "constraints.txt", "README.md", "src"}
    assert all((ROOT / path).exists() for path in kept)


# --- Kubernetes schemas -----------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("source", ["batch-predict.yaml", "indexed/indexed-job.yaml", "rendered_base", "rendered_example"])
def test_manifests_match_the_strict_kubernetes_schemas(source, version, request):
    docs = request.getfixturevalue(source) if source.startswith("rendered_") else _load_all(KUBERNETES / source)
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_strict_schemas_reject_a_misspelt_field():
    job = _load_all(SINGLE_JOB)[0]
    job["spec"]["template"]["spec"]["containers"][0]["envv"] = []
    with pytest.raises(kubernetes_validate.ValidationError, match="envv"):
        kubernetes_validate.validate(job, KUBERNETES_VERSIONS[-1], strict=True)


def test_base_renders_exactly_the_single_job_file(rendered_base):
    assert rendered_base == _load_all(SINGLE_JOB)


# --- What the API server and the kubelet enforce beyond the schemas ---------------------------


def _pod_rule_violations(pod: dict[str, Any]) -> list[str]:
    """Mistakes in a pod spec that validate against the schema yet fail or misbehave on a cluster."""
    problems = []
    containers = {c["name"]: c for c in pod["containers"]}
    volumes = {v["name"] for v in pod.get("volumes", [])}
    for name, container in containers.items():
        env = container.get("env", [])
        defined = {e["name"] for e in env}
        # The kubelet leaves an undefined $(VAR) in place, so the job would get a literal "$(VAR)".
        for arg in container.get("command", []) + container.get("args", []):
            for var in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", arg):
                if var not in defined:
                    problems.append(f"{name}: $({var}) is not in env")
        for e in env:
            ref = e.get("valueFrom", {}).get("resourceFieldRef")
            if ref and ref.get("containerName", name) not in containers:
                problems.append(f"{name}: env {e['name']} refers to unknown container {ref['containerName']}")
        for mount in container.get("volumeMounts", []):
            if mount["name"] not in volumes:
                problems.append(f"{name}: mounts unknown volume {mount['name']}")
        resources = container.get("resources", {})
        if GPU in resources.get("requests", {}) and resources["requests"][GPU] != resources.get("limits", {}).get(GPU):
            problems.append(f"{name}: an extended resource's request must equal its limit")
    return problems


def _job_rule_violations(job: dict[str, Any]) -> list[str]:
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    problems = _pod_rule_violations(pod)
    containers = {c["name"] for c in pod["containers"]}
    rules = spec.get("podFailurePolicy", {}).get("rules", [])
    if rules and pod.get("restartPolicy") != "Never":
        problems.append("podFailurePolicy needs restartPolicy: Never")
    for rule in rules:
        codes = rule.get("onExitCodes")
        if codes and codes.get("containerName", next(iter(containers))) not in containers:
            problems.append(f"podFailurePolicy names unknown container {codes['containerName']}")
        if codes and codes["operator"] == "In" and 0 in codes["values"]:
            problems.append("podFailurePolicy cannot match exit code 0 with In")
        if rule["action"] == "FailIndex" and "backoffLimitPerIndex" not in spec:
            problems.append("FailIndex needs backoffLimitPerIndex")
    indexed = spec.get("completionMode") == "Indexed"
    for field in ("backoffLimitPerIndex", "maxFailedIndexes"):
        if field in spec and not indexed:
            problems.append(f"{field} needs completionMode: Indexed")
    if indexed:
        completions = spec["completions"]
        if spec.get("maxFailedIndexes", 0) > completions:
            problems.append("maxFailedIndexes exceeds completions")
        if "maxFailedIndexes" in spec and "backoffLimitPerIndex" not in spec:
            problems.append("maxFailedIndexes needs backoffLimitPerIndex")
    return problems


def _jobs(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    jobs = [doc for doc in docs if doc["kind"] == "Job"]
    assert jobs
    return jobs


def test_jobs_keep_the_rules_beyond_the_schemas(rendered_example):
    for job in _jobs(_load_all(SINGLE_JOB)) + _jobs(rendered_example):
        assert _job_rule_violations(job) == [], job["metadata"]["name"]


@pytest.mark.parametrize(
    "breakage,expected",
    [
        (lambda job, pod, c: c["args"].append("--label_map=$(LABEL_MAP)"), "$(LABEL_MAP) is not in env"),
        (lambda job, pod, c: pod.update(restartPolicy="OnFailure"), "needs restartPolicy: Never"),
        (lambda job, pod, c: pod.update(volumes=[]), "unknown volume"),
        (lambda job, pod, c: c["resources"]["limits"].update({GPU: 2}), "request must equal its limit"),
        (lambda job, pod, c: job["spec"].update(maxFailedIndexes=1), "needs completionMode: Indexed"),
    ],
)
def test_the_rule_check_finds_each_kind_of_mistake(breakage, expected):
    job = _load_all(SINGLE_JOB)[0]
    pod = job["spec"]["template"]["spec"]
    breakage(job, pod, pod["containers"][0])
    assert any(expected in problem for problem in _job_rule_violations(job))


# --- The Job and the Indexed Job --------------------------------------------------------------


def _container(job: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in job["spec"]["template"]["spec"]["containers"] if c["name"] == CONTAINER)


def _env(job: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in _container(job)["env"]}


def _cli_options() -> set[str]:
    return {opt for param in predict.params for opt in param.opts}


def test_the_single_job_runs_one_pod_on_one_gpu():
    (job,) = _jobs(_load_all(SINGLE_JOB))
    spec = job["spec"]
    assert spec.get("completionMode", "NonIndexed") == "NonIndexed"
    assert spec.get("completions", 1) == 1 and spec.get("parallelism", 1) == 1
    assert spec["backoffLimit"] >= 1
    assert _container(job)["resources"]["limits"][GPU] == 1
    assert "JOB_COMPLETION_COUNT" not in _env(job)


def test_the_job_passes_only_options_the_cli_knows():
    args = _container(_jobs(_load_all(SINGLE_JOB))[0])["args"]
    flags = {arg.split("=", 1)[0] for arg in args}
    assert flags <= _cli_options(), flags - _cli_options()
    for required in ("--input_file_patterns", "--input_file_format", "--model_dir",
                     "--output_result_prefix", "--output_error_prefix"):
        assert required in flags


def test_a_setup_error_fails_the_job_at_once_and_a_preemption_is_not_counted():
    (job,) = _jobs(_load_all(SINGLE_JOB))
    rules = job["spec"]["podFailurePolicy"]["rules"]
    by_action = {rule["action"]: rule for rule in rules}
    assert by_action["FailJob"]["onExitCodes"] == {"containerName": CONTAINER, "operator": "In", "values": [2]}
    assert by_action["Ignore"]["onPodConditions"] == [{"type": "DisruptionTarget", "status": "True"}]


def test_the_indexed_job_gives_each_pod_the_shard_count(rendered_example):
    (job,) = _jobs(rendered_example)
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert 1 <= spec["parallelism"] <= spec["completions"]
    # Kubernetes sets JOB_COMPLETION_INDEX itself, but no count: the manifest must, and equal.
    assert _env(job)["JOB_COMPLETION_COUNT"] == str(spec["completions"])
    assert "JOB_COMPLETION_INDEX" not in _env(job)


def test_the_indexed_job_retries_per_index_with_no_job_wide_limit(rendered_example):
    (job,) = _jobs(rendered_example)
    spec = job["spec"]
    assert spec["backoffLimitPerIndex"] >= 1
    assert "backoffLimit" not in spec


def test_the_count_follows_completions_whatever_the_overlay_sets(tmp_path):
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    example = yaml.safe_load((EXAMPLE_OVERLAY / "kustomization.yaml").read_text())
    # Kustomize takes only relative paths to other kustomizations.
    example["resources"] = [os.path.relpath(KUBERNETES, overlay)]
    example["components"] = [os.path.relpath(KUBERNETES / "indexed", overlay)]
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(example))
    values = yaml.safe_load((EXAMPLE_OVERLAY / "job-values.yaml").read_text())
    values["spec"]["completions"] = 37
    (overlay / "job-values.yaml").write_text(yaml.safe_dump(values))
    (job,) = _jobs(_kustomize(overlay))
    assert _env(job)["JOB_COMPLETION_COUNT"] == "37"


def test_indexed_pods_run_the_single_jobs_command_with_its_output_prefixes(rendered_example):
    (single,) = _jobs(_load_all(SINGLE_JOB))
    (indexed,) = _jobs(rendered_example)
    assert _container(indexed)["args"] == _container(single)["args"]
    for name in ("OUTPUT_RESULT_PREFIX", "OUTPUT_ERROR_PREFIX", "INPUT_FILE_PATTERNS", "MODEL_DIR"):
        assert _env(indexed)[name]


def test_the_example_overlay_sets_every_path_the_job_reads(rendered_example):
    values = _load_all(EXAMPLE_OVERLAY / "job-values.yaml")[0]
    set_by_user = {e["name"] for e in values["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert {"INPUT_FILE_PATTERNS", "INPUT_FILE_FORMAT", "MODEL_DIR",
            "OUTPUT_RESULT_PREFIX", "OUTPUT_ERROR_PREFIX"} <= set_by_user
    assert {"completions", "parallelism"} <= set(values["spec"])


# --- KubeRay RayJob (no CRD schema is bundled: its structure and its pods are checked) ---------


def _rayjob() -> dict[str, Any]:
    (job,) = _load_all(RAYJOB)
    return job


def _ray_pod_templates(job: dict[str, Any]) -> list[dict[str, Any]]:
    cluster = job["spec"]["rayClusterSpec"]
    return [cluster["headGroupSpec"]["template"]] + [group["template"] for group in cluster["workerGroupSpecs"]]


def test_rayjob_is_a_kuberay_v1_rayjob_that_cleans_up_after_itself():
    job = _rayjob()
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert job["metadata"]["name"]
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    cluster = spec["rayClusterSpec"]
    groups = cluster["workerGroupSpecs"]
    assert groups and all(group["groupName"] for group in groups)
    for group in groups:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    # KubeRay passes rayStartParams to `ray start` as strings and rejects other types.
    for params in [cluster["headGroupSpec"]["rayStartParams"]] + [g["rayStartParams"] for g in groups]:
        assert all(isinstance(value, str) for value in params.values())


def test_rayjob_runs_the_cli_with_the_ray_runner_and_known_options():
    words = shlex.split(_rayjob()["spec"]["entrypoint"])
    assert words[:3] == ["batch-predict", "--runner", "ray"]
    flags = {word for word in words if word.startswith("--")}
    assert flags <= _cli_options(), flags - _cli_options()


def test_rayjob_ray_version_is_the_pinned_ray():
    assert _rayjob()["spec"]["rayClusterSpec"]["rayVersion"] == _pins()["ray"]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_rayjob_pods_match_the_strict_kubernetes_schemas(version):
    for template in _ray_pod_templates(_rayjob()):
        pod_template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": template}
        kubernetes_validate.validate(pod_template, version, strict=True)
        assert _pod_rule_violations(template["spec"]) == []


def test_rayjob_workers_hold_one_gpu_each_and_the_head_none():
    head, *workers = _ray_pod_templates(_rayjob())
    assert GPU not in head["spec"]["containers"][0]["resources"].get("limits", {})
    for worker in workers:
        assert worker["spec"]["containers"][0]["resources"]["limits"][GPU] == 1


# --- One image, one user, everywhere ----------------------------------------------------------


def test_every_pod_runs_as_the_image_user_and_never_as_root(rendered_example):
    uid, gid = _image_user()
    templates = [job["spec"]["template"] for job in _jobs(_load_all(SINGLE_JOB)) + _jobs(rendered_example)]
    for template in templates + _ray_pod_templates(_rayjob()):
        context = template["spec"]["securityContext"]
        assert (context["runAsNonRoot"], context["runAsUser"], context["runAsGroup"]) == (True, uid, gid)
        for container in template["spec"]["containers"]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
