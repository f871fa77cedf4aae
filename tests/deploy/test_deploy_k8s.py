"""Render every kustomization and check the manifests.

Built-in kinds are validated against the Kubernetes OpenAPI schemas bundled in kubernetes-validate
(strict: unknown fields fail), offline. KEDA and Prometheus Operator resources are checked
structurally against what the worker's configuration says (same group, topics, brokers, port).
kustomize comes from `make tools` (deploy/tools/install-kustomize.sh into .venv/bin), which `make test`
runs first; without it these tests skip when run by hand and fail in CI.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from stream.config import Settings, load_settings
from stream.errors import ConfigError
from tests.support.infra import unavailable

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is in the dev extras")

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
WORKER_TARGETS = ("overlays/cpu", "overlays/gpu")
ALL_TARGETS = (*WORKER_TARGETS, "replay")
KUBERNETES_VERSION = "1.30.0"  # oldest release the manifests support
PARTITIONS = 12  # of agegate.signups and agegate.uploads
REPLAY_SOURCE_PARTITIONS = (12, 12, 6)  # signups, uploads, age-feedback: a shard count must divide each
CRD_GROUPS = {"keda.sh", "monitoring.coreos.com"}
SETTING_ENV = {f.metadata["env"]: f for f in dataclasses.fields(Settings)}

Manifest = dict[str, Any]


def find_kustomize() -> str | None:
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    candidates = [
        os.environ.get("AGEGATE_KUSTOMIZE", ""),
        os.environ.get("AGEGATE_TOOLS_BIN", "") and str(Path(os.environ["AGEGATE_TOOLS_BIN"]) / "kustomize"),
        str(Path(sys.executable).parent / "kustomize"),  # `make tools` puts it in .venv/bin
        str(cache / "agegate" / "bin" / "kustomize"),
        shutil.which("kustomize") or "",
    ]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


@pytest.fixture(scope="module")
def kustomize() -> str:
    path = find_kustomize()
    if path is None:
        unavailable("kustomize not found: run deploy/tools/install-kustomize.sh (or set AGEGATE_KUSTOMIZE)")
    return path


@pytest.fixture(scope="module")
def rendered(kustomize: str) -> dict[str, list[Manifest]]:
    out = {}
    for target in ALL_TARGETS:
        proc = subprocess.run(
            [kustomize, "build", str(K8S / target)], capture_output=True, text=True, timeout=120, check=False
        )
        assert proc.returncode == 0, f"kustomize build {target} failed:\n{proc.stderr}"
        out[target] = [doc for doc in yaml.safe_load_all(proc.stdout) if doc]
    return out


def one(docs: list[Manifest], kind: str, name_prefix: str = "") -> Manifest:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].startswith(name_prefix)]
    assert len(found) == 1, f"expected one {kind} {name_prefix!r}, found {len(found)}"
    return found[0]


def pod_spec(doc: Manifest) -> Manifest:
    spec: Manifest = doc["spec"]["template"]["spec"]
    return spec


def container(doc: Manifest) -> Manifest:
    containers = pod_spec(doc)["containers"]
    assert len(containers) == 1
    c: Manifest = containers[0]
    return c


def env_config(docs: list[Manifest]) -> dict[str, str]:
    data: dict[str, str] = one(docs, "ConfigMap", "agegate-env-")["data"]
    return data


def resolved_env(docs: list[Manifest], workload: Manifest) -> dict[str, str]:
    """The environment the container would see, with a stand-in for every Secret value."""
    stand_ins = {
        "KAFKA_SASL_USERNAME": "agegate",
        "KAFKA_SASL_PASSWORD": "not-a-secret",
        "REDIS_URL": "rediss://agegate:not-a-secret@redis:6379/0",
        "SCHEMA_REGISTRY_URL": "https://registry:8081",
        "SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO": "agegate:not-a-secret",
    }
    env = dict(env_config(docs))
    for var in container(workload).get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        elif "secretKeyRef" in var.get("valueFrom", {}):
            env[var["name"]] = stand_ins[var["name"]]
    return env


def group_of(doc: Manifest) -> str:
    api: str = doc["apiVersion"]
    return api.split("/")[0] if "/" in api else ""


# --- rendering and schemas ----------------------------------------------------------------------


def test_schema_validation_rejects_a_broken_manifest() -> None:
    """The validator is strict: a typo in a field name fails (so the real check below means something)."""
    bad = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {
            "selector": {"matchLabels": {"a": "b"}},
            "replica": 2,
            "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c"}]}},
        },
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("target", ALL_TARGETS)
def test_manifests_validate_against_kubernetes_schemas(rendered: dict[str, list[Manifest]], target: str) -> None:
    docs = rendered[target]
    assert docs
    for doc in docs:
        if group_of(doc) in CRD_GROUPS:
            continue  # checked structurally below
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{target}: {doc['kind']}/{doc['metadata']['name']}: {exc.message} at {list(exc.path)}")
        assert doc["metadata"]["namespace"] == "agegate", f"{doc['kind']} outside the agegate namespace"


@pytest.mark.parametrize("target", WORKER_TARGETS)
def test_worker_overlay_has_every_piece(rendered: dict[str, list[Manifest]], target: str) -> None:
    kinds = sorted(d["kind"] for d in rendered[target])
    assert kinds == sorted(
        [
            "ServiceAccount",
            "ConfigMap",
            "ConfigMap",
            "Deployment",
            "Deployment",
            "PodDisruptionBudget",
            "PersistentVolumeClaim",
            "PodMonitor",
            "PodMonitor",
            "ScaledObject",
            "TriggerAuthentication",
        ]
    )
    # No Secret is ever rendered from the repository.
    assert all(d["kind"] != "Secret" for d in rendered[target])


# --- the worker Deployment ----------------------------------------------------------------------


@pytest.mark.parametrize("target", WORKER_TARGETS)
def test_worker_configuration_passes_agegate_validation(rendered: dict[str, list[Manifest]], target: str) -> None:
    docs = rendered[target]
    env = resolved_env(docs, one(docs, "Deployment", "agegate-worker"))
    unknown = {k for k in env if k not in SETTING_ENV and k != "POD_NAME"}
    assert unknown == set(), "environment variables agegate does not read"
    try:
        settings = load_settings(environ=env)
    except ConfigError as exc:
        pytest.fail(f"{target}: {exc}")
    assert settings.kafka_security_protocol in {"SSL", "SASL_SSL"}, "production traffic must use TLS"
    assert settings.policy_file.startswith("/etc/agegate/policy/")
    assert settings.model_checkpoint.startswith("/models/")


@pytest.mark.parametrize("target", WORKER_TARGETS)
def test_worker_probes_ports_and_shutdown(rendered: dict[str, list[Manifest]], target: str) -> None:
    docs = rendered[target]
    deploy = one(docs, "Deployment", "agegate-worker")
    settings = load_settings(environ=resolved_env(docs, deploy))
    c = container(deploy)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["http"] == settings.web_port
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert pod_spec(deploy)["terminationGracePeriodSeconds"] > settings.shutdown_grace_s + 5
    annotations = deploy["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(settings.web_port)
    assert "replicas" not in deploy["spec"], "KEDA owns the replica count"
    assert "args" not in c or c["args"] == [], "the image's entry point (agegate worker) must run unchanged"


@pytest.mark.parametrize("target", WORKER_TARGETS)
def test_worker_resources_and_security(rendered: dict[str, list[Manifest]], target: str) -> None:
    deploy = one(rendered[target], "Deployment", "agegate-worker")
    c = container(deploy)
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][kind]), f"{kind} must set cpu and memory"
    pod_sc, sc = pod_spec(deploy)["securityContext"], c["securityContext"]
    assert pod_sc["runAsNonRoot"] is True
    assert pod_sc["runAsUser"] != 0
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert pod_spec(deploy)["automountServiceAccountToken"] is False
    # The read-only root needs writable scratch where the worker writes.
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert {"/tmp", "/var/lib/agegate"} <= set(mounts)


@pytest.mark.parametrize("target", WORKER_TARGETS)
def test_secrets_come_from_secret_objects(rendered: dict[str, list[Manifest]], target: str) -> None:
    docs = rendered[target]
    c = container(one(docs, "Deployment", "agegate-worker"))
    secret_envs = {f.metadata["env"] for f in dataclasses.fields(Settings) if f.metadata["secret"]}
    secret_envs.add("KAFKA_SASL_USERNAME")
    by_name = {v["name"]: v for v in c["env"]}
    for name in secret_envs:
        assert "secretKeyRef" in by_name[name]["valueFrom"], f"{name} must come from a Secret"
        assert name not in env_config(docs), f"{name} must not be in a ConfigMap"


@pytest.mark.parametrize("target", WORKER_TARGETS)
def test_policy_and_model_are_mounted(rendered: dict[str, list[Manifest]], target: str, tmp_path: Path) -> None:
    docs = rendered[target]
    deploy = one(docs, "Deployment", "agegate-worker")
    settings = load_settings(environ=resolved_env(docs, deploy))
    volumes = {v["name"]: v for v in pod_spec(deploy)["volumes"]}
    mounts = {m["mountPath"]: m for m in container(deploy)["volumeMounts"]}
    policy_dir, policy_key = settings.policy_file.rsplit("/", 1)
    policy_volume = volumes[mounts[policy_dir]["name"]]
    policy_map = one(docs, "ConfigMap", "agegate-policy-")
    assert policy_volume["configMap"]["name"] == policy_map["metadata"]["name"]
    model_mount = mounts["/models"]
    assert model_mount["readOnly"] is True
    assert "persistentVolumeClaim" in volumes[model_mount["name"]]
    # The shipped policy is valid and agrees with the worker on the belief half-life.
    policy_module = pytest.importorskip("stream.core.policy")
    path = tmp_path / policy_key
    path.write_text(policy_map["data"][policy_key])
    policy = policy_module.load_policy(path)
    assert policy is not None
    assert float(policy_map["data"][policy_key].split("half_life_days =")[1].split()[0]) == (
        settings.belief_half_life_days
    )


def test_gpu_overlay_schedules_on_gpus(rendered: dict[str, list[Manifest]]) -> None:
    gpu = one(rendered["overlays/gpu"], "Deployment", "agegate-worker")
    c, spec = container(gpu), pod_spec(gpu)
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert c["image"].endswith("-cuda")
    env = env_config(rendered["overlays/gpu"])
    assert env["AGEGATE_DEVICE"] == "cuda"
    # Decoding is a GPU worker's limit: decoder processes, sized with the inference threads to the request.
    decoders, threads = int(env["AGEGATE_DECODE_PROCESSES"]), int(env["AGEGATE_INFERENCE_THREADS"])
    assert decoders >= 2
    assert decoders + threads == int(c["resources"]["requests"]["cpu"])


def test_cpu_overlay_has_no_gpu_and_sized_threads(rendered: dict[str, list[Manifest]]) -> None:
    docs = rendered["overlays/cpu"]
    cpu = one(docs, "Deployment", "agegate-worker")
    c = container(cpu)
    assert "nvidia.com/gpu" not in c["resources"]["limits"]
    assert "nodeSelector" not in pod_spec(cpu)
    assert c["image"].endswith("-cpu")
    env = env_config(docs)
    assert env["AGEGATE_DEVICE"] == "cpu"
    # torch threads sized to the CPU request, not to the node.
    assert int(env["AGEGATE_INFERENCE_THREADS"]) == int(c["resources"]["requests"]["cpu"])


@pytest.mark.parametrize("target", WORKER_TARGETS)
def test_selectors_match_the_pods(rendered: dict[str, list[Manifest]], target: str) -> None:
    docs = rendered[target]
    deploy = one(docs, "Deployment", "agegate-worker")
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    for selector in (
        deploy["spec"]["selector"]["matchLabels"],
        one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        one(docs, "PodMonitor", "agegate-worker")["spec"]["selector"]["matchLabels"],
    ):
        assert selector.items() <= labels.items()
    assert one(docs, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1


# --- KEDA and Prometheus Operator resources (structural) ----------------------------------------

SASL_MODES = {"PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256", "SCRAM-SHA-512": "scram_sha512"}
KEDA_SPEC_KEYS = {
    "scaleTargetRef",
    "minReplicaCount",
    "maxReplicaCount",
    "pollingInterval",
    "cooldownPeriod",
    "idleReplicaCount",
    "initialCooldownPeriod",
    "advanced",
    "triggers",
    "fallback",
}
KEDA_KAFKA_METADATA = {
    "bootstrapServers",
    "consumerGroup",
    "topic",
    "lagThreshold",
    "activationLagThreshold",
    "offsetResetPolicy",
    "allowIdleConsumers",
    "scaleToZeroOnInvalidOffset",
    "excludePersistentLag",
    "limitToPartitionsWithLag",
    "partitionLimitation",
    "sasl",
    "tls",
    "version",
    "ensureEvenDistributionOfPartitions",
}
KEDA_AUTH_PARAMETERS = {
    "sasl",
    "username",
    "password",
    "tls",
    "ca",
    "cert",
    "key",
    "keyPassword",
    "unsafeSsl",
    "oauthTokenEndpointUri",
    "scopes",
    "extensions",
}


@pytest.mark.parametrize("target", WORKER_TARGETS)
def test_keda_scales_the_worker_on_its_consumer_group(rendered: dict[str, list[Manifest]], target: str) -> None:
    docs = rendered[target]
    deploy = one(docs, "Deployment", "agegate-worker")
    settings = load_settings(environ=resolved_env(docs, deploy))
    scaled = one(docs, "ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert set(spec) <= KEDA_SPEC_KEYS
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": deploy["metadata"]["name"]}
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= PARTITIONS
    topics = set()
    for trigger in spec["triggers"]:
        meta = trigger["metadata"]
        assert trigger["type"] == "kafka"
        assert set(meta) <= KEDA_KAFKA_METADATA, set(meta) - KEDA_KAFKA_METADATA
        assert all(isinstance(v, str) for v in meta.values()), "KEDA metadata values are strings"
        assert meta["bootstrapServers"] == settings.kafka_bootstrap_servers
        assert meta["consumerGroup"] == settings.consumer_group
        assert int(meta["lagThreshold"]) > 0
        assert meta["sasl"] == SASL_MODES[settings.kafka_sasl_mechanism]
        assert meta["tls"] == ("enable" if settings.kafka_security_protocol.endswith("SSL") else "disable")
        assert trigger["authenticationRef"]["name"] == one(docs, "TriggerAuthentication")["metadata"]["name"]
        topics.add(meta["topic"])
    assert topics == {f"{settings.topic_prefix}signups", f"{settings.topic_prefix}uploads"}


def test_keda_topics_follow_the_topic_prefix(kustomize: str, tmp_path: Path) -> None:
    """Another environment's prefix, set in the one place configuration lives, reaches the triggers."""
    shutil.copytree(K8S, tmp_path / "k8s")
    config = tmp_path / "k8s" / "components" / "config" / "kustomization.yaml"
    text = config.read_text()
    assert "AGEGATE_TOPIC_PREFIX=agegate." in text
    config.write_text(text.replace("AGEGATE_TOPIC_PREFIX=agegate.", "AGEGATE_TOPIC_PREFIX=staging."))
    proc = subprocess.run(
        [kustomize, "build", str(tmp_path / "k8s" / "overlays" / "cpu")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    scaled = one([d for d in yaml.safe_load_all(proc.stdout) if d], "ScaledObject")
    assert {t["metadata"]["topic"] for t in scaled["spec"]["triggers"]} == {"staging.signups", "staging.uploads"}


@pytest.mark.parametrize("target", WORKER_TARGETS)
def test_keda_reads_the_workers_secrets(rendered: dict[str, list[Manifest]], target: str) -> None:
    docs = rendered[target]
    deploy = one(docs, "Deployment", "agegate-worker")
    auth = one(docs, "TriggerAuthentication")["spec"]
    assert set(auth) == {"secretTargetRef"}
    refs = {r["parameter"]: (r["name"], r["key"]) for r in auth["secretTargetRef"]}
    assert set(refs) <= KEDA_AUTH_PARAMETERS
    worker_refs = {
        v["name"]: (v["valueFrom"]["secretKeyRef"]["name"], v["valueFrom"]["secretKeyRef"]["key"])
        for v in container(deploy)["env"]
        if "secretKeyRef" in v.get("valueFrom", {})
    }
    assert refs["username"] == worker_refs["KAFKA_SASL_USERNAME"]
    assert refs["password"] == worker_refs["KAFKA_SASL_PASSWORD"]
    ca_volume = next(v for v in pod_spec(deploy)["volumes"] if v["name"] == "kafka-ca")
    assert refs["ca"][0] == ca_volume["secret"]["secretName"]


@pytest.mark.parametrize("target", WORKER_TARGETS)
def test_pod_monitor_scrapes_the_metrics_port(rendered: dict[str, list[Manifest]], target: str) -> None:
    docs = rendered[target]
    monitor = one(docs, "PodMonitor", "agegate-worker")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    ports = {p["name"] for p in container(one(docs, "Deployment", "agegate-worker"))["ports"]}
    for endpoint in monitor["spec"]["podMetricsEndpoints"]:
        assert endpoint["port"] in ports
        assert endpoint["path"] == "/metrics"


# --- replay Job ---------------------------------------------------------------------------------


def test_replay_job(rendered: dict[str, list[Manifest]]) -> None:
    docs = rendered["replay"]
    job = one(docs, "Job")
    c = container(job)
    assert c["command"] == ["agegate", "replay"]
    assert pod_spec(job)["restartPolicy"] == "Never"
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    env = resolved_env(docs, job)
    settings = load_settings(environ=env)
    worker_env = resolved_env(rendered["overlays/cpu"], one(rendered["overlays/cpu"], "Deployment", "agegate-worker"))
    assert settings.redis_key_prefix != load_settings(environ=worker_env).redis_key_prefix, (
        "a replay must keep its beliefs apart from the live ones"
    )


def test_replay_job_arguments_parse(rendered: dict[str, list[Manifest]]) -> None:
    c = container(one(rendered["replay"], "Job"))
    cli = pytest.importorskip("stream.cli")
    if "replay" not in cli.COMMANDS:
        pytest.skip("agegate replay is not registered yet")
    try:
        __import__(cli.COMMANDS["replay"][0])
    except ModuleNotFoundError:
        pytest.skip("stream.runners.replay is not written yet")
    parser = cli.build_parser(only="replay")
    args = parser.parse_args(["replay", *c["args"]])
    assert args.command == "replay"


def expand_args(c: Manifest, env: dict[str, str]) -> list[str]:
    """The container's args as Kubernetes expands them: $(NAME) only for a NAME declared in env."""
    declared = {v["name"] for v in c.get("env", [])}

    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        assert name in declared, f"$({name}) in args is not declared in the container's env: left unexpanded"
        return env[name]

    return [re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", sub, a) for a in c["args"]]


def test_replay_job_is_indexed_one_pod_per_shard(rendered: dict[str, list[Manifest]]) -> None:
    """Pod i of an Indexed Job replays shard i/N; every shard keeps its own output and state on a volume
    that outlives the pod, so a retried pod resumes its shard instead of starting over."""
    docs = rendered["replay"]
    job = one(docs, "Job")
    spec, c = job["spec"], container(job)
    assert spec["completionMode"] == "Indexed"
    shards = spec["completions"]
    assert spec["parallelism"] == shards, "one pod per shard, all at once"
    assert shards > 1
    assert all(n % shards == 0 for n in REPLAY_SOURCE_PARTITIONS), "a user's events must land in one shard"
    assert spec["backoffLimitPerIndex"] >= 1, "each shard retries on its own"
    assert "backoffLimit" not in spec, "a Job-wide limit would stop every shard when one fails"
    index_env = next(v for v in c["env"] if v["name"] == "JOB_COMPLETION_INDEX")
    assert index_env["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    )

    # The data volume is a claim rendered with the Job, writable by pods on any node.
    data_mount = next(m for m in c["volumeMounts"] if m["mountPath"] == "/var/lib/agegate")
    volume = next(v for v in pod_spec(job)["volumes"] if v["name"] == data_mount["name"])
    claim = one(docs, "PersistentVolumeClaim")
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]

    cli = pytest.importorskip("stream.cli")
    replay = importlib.import_module(cli.COMMANDS["replay"][0])
    parser = cli.build_parser(only="replay")
    env = resolved_env(docs, job)
    settings = load_settings(environ=env)
    outs, states = set(), set()
    for index in range(shards):
        args = parser.parse_args(["replay", *expand_args(c, env | {"JOB_COMPLETION_INDEX": str(index)})])
        cfg = replay.config_from_args(args, settings)
        assert cfg.shard == (index, shards)
        out_kind, out_path = cfg.out.split(":", 1)
        assert out_kind == "file"
        for path in (Path(out_path), cfg.state_path):
            assert path.is_relative_to(data_mount["mountPath"]), f"{path} is not on the data volume"
        outs.add(out_path)
        states.add(cfg.state_path)
    assert len(outs) == len(states) == shards, "every shard needs its own output and state file"


@pytest.mark.parametrize("target", WORKER_TARGETS)
def test_online_metrics_exporter(rendered: dict[str, list[Manifest]], target: str) -> None:
    """`agegate eval --online` feeds the dashboard's online accuracy and drift panels."""
    docs = rendered[target]
    deploy = one(docs, "Deployment", "agegate-online-metrics")
    c = container(deploy)
    assert deploy["spec"]["replicas"] == 1, "in-memory state: exactly one exporter"
    assert c["command"] == ["agegate", "eval"]
    port = c["args"][c["args"].index("--metrics-port") + 1]
    assert {p["name"]: p["containerPort"] for p in c["ports"]}["metrics"] == int(port)
    monitor = one(docs, "PodMonitor", "agegate-online-metrics")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= deploy["spec"]["template"]["metadata"]["labels"].items()
    )
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    load_settings(environ=resolved_env(docs, deploy))
    cli = pytest.importorskip("stream.cli")
    args = cli.build_parser(only="eval").parse_args(["eval", *c["args"]])
    assert args.online is True
    assert args.metrics_port == int(port)
