"""`gkit deploy --target render` and the chart, checked by the real helm, kubernetes-validate
(strict, Kubernetes 1.29 and 1.33) and checkov."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests import pki
from tests.conftest import REPO, run_gkit


@pytest.fixture(scope="module")
def verified_model(tmp_path_factory):
    """The demo model, signed with a generated key and verified (the audit log records it)."""
    d = tmp_path_factory.mktemp("deploy")
    model = d / "granite-demo"
    assert run_gkit("demo-model", str(model)).returncode == 0
    key = pki.new_key()
    priv, pub = pki.write_key(key, d / "k.pem"), pki.write_public(key, d / "k.pub")
    audit = f"sqlite:///{d / 'audit.db'}"
    # one host for the module: its audit key signs the trust inputs verify records, and
    # every deploy here reads them with that key
    env = {"GKIT_AUDIT_DB": audit, "XDG_DATA_HOME": str(d / "data")}
    assert run_gkit("sign", str(model), "--key", str(priv), env=env).returncode == 0
    assert run_gkit("verify", str(model), "--public-key", str(pub), env=env).returncode == 0
    return model, pub, env


@pytest.fixture(scope="module")
def rendered(verified_model, tmp_path_factory, helm_binary):
    model, _, env = verified_model
    out = tmp_path_factory.mktemp("out")
    result = run_gkit(
        "deploy",
        str(model),
        "--gpus",
        "2",
        "--target",
        "render",
        "--output",
        str(out),
        "--json",
        env={**env, "GKIT_HELM": str(helm_binary)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return out, json.loads(result.stdout)


def _docs(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def _helm_template(helm, out: Path, *extra: str) -> list[dict]:
    r = subprocess.run(
        [
            str(helm),
            "template",
            "granite",
            str(out / "chart"),
            "-f",
            str(out / "values.yaml"),
            "--namespace",
            "llm",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    return _docs(r.stdout)


def test_helm_lint_and_template_pass(rendered, helm_binary):
    out, result = rendered
    lint = subprocess.run(
        [str(helm_binary), "lint", "--strict", str(out / "chart"), "-f", str(out / "values.yaml")],
        capture_output=True,
        text=True,
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    kinds = sorted(d["kind"] for d in _helm_template(helm_binary, out))
    assert kinds == [
        "ConfigMap",  # the trust inputs the verify step uses
        "Deployment",
        "NetworkPolicy",
        "PersistentVolumeClaim",
        "Pod",
        "PodDisruptionBudget",
        "Service",
        "ServiceAccount",
    ]  # Pod: helm test
    assert result["verification"].startswith("verified (audit record")


def test_deployment_asks_for_two_gpus_tp2_shm_and_verify(rendered, helm_binary):
    out, result = rendered
    dep = next(d for d in _helm_template(helm_binary, out) if d["kind"] == "Deployment")
    pod = dep["spec"]["template"]["spec"]
    runtime = pod["containers"][0]
    assert runtime["resources"]["requests"]["nvidia.com/gpu"] == 2
    assert runtime["resources"]["limits"]["nvidia.com/gpu"] == 2
    args = runtime["args"]
    assert args[args.index("--gpus") + 1] == "2"
    assert {"name": "shm", "mountPath": "/dev/shm"} in runtime["volumeMounts"]
    shm = next(v for v in pod["volumes"] if v["name"] == "shm")
    assert shm["emptyDir"]["medium"] == "Memory"
    verify = next(c for c in pod["initContainers"] if c["name"] == "verify")
    assert verify["args"][:2] == ["verify", "/models/model"]
    assert verify["args"][verify["args"].index("--expect-digest") + 1] == result["manifest_digest"]
    assert dep["spec"]["strategy"]["type"] == "Recreate"
    for c in [*pod["containers"], *pod["initContainers"]]:
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] and sc["readOnlyRootFilesystem"]
        assert sc["capabilities"]["drop"] == ["ALL"] and not sc["allowPrivilegeEscalation"]
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    probes = runtime["startupProbe"]
    assert probes["periodSeconds"] * probes["failureThreshold"] >= 1800
    assert runtime["readinessProbe"]["httpGet"]["path"] == "/v1/models"


def test_one_gpu_has_no_shm_and_servicemonitor_only_with_its_api(rendered, helm_binary):
    out, _ = rendered
    one = _helm_template(helm_binary, out, "--set", "gpus=1")
    dep = next(d for d in one if d["kind"] == "Deployment")
    assert all(v["name"] != "shm" for v in dep["spec"]["template"]["spec"]["volumes"])
    assert not any(d["kind"] == "ServiceMonitor" for d in one)
    with_api = _helm_template(
        helm_binary, out, "--api-versions", "monitoring.coreos.com/v1/ServiceMonitor"
    )
    assert any(d["kind"] == "ServiceMonitor" for d in with_api)


@pytest.mark.parametrize("bad", ["gpus=1.5", "gpus=0", "model.source=s3"])
def test_schema_rejects_what_cannot_work(rendered, helm_binary, bad):
    out, _ = rendered
    r = subprocess.run(
        [
            str(helm_binary),
            "lint",
            str(out / "chart"),
            "-f",
            str(out / "values.yaml"),
            "--set",
            bad,
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode != 0 and "values don't meet the specifications" in r.stdout + r.stderr


@pytest.mark.parametrize("version", ["1.29.0", "1.33.0"])
def test_every_object_validates_strictly(rendered, helm_binary, version):
    import kubernetes_validate

    out, _ = rendered
    docs = _helm_template(helm_binary, out, "--set", "autoscaling.enabled=true")
    docs += [
        d
        for d in _helm_template(
            helm_binary,
            out,
            "--set",
            "model.source=hf",
            "--set",
            "model.hf.repoId=ibm-granite/granite-4.0-h-micro",
            "--set",
            f"model.hf.revision={'a' * 40}",
        )
        if d["kind"] == "Deployment"
    ]
    assert len(docs) >= 9 and "Pod" in {d["kind"] for d in docs}
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)  # raises on any error


def _accepted_checkov_failures() -> set[str]:
    text = (REPO / "docs" / "deploy.md").read_text()
    table = text.split("checkov failures we accept")[1].split("## Images")[0]
    return set(re.findall(r"CKV_K8S_\d+", table))


def test_checkov_reports_only_documented_failures(rendered, helm_binary, tmp_path):
    checkov = shutil.which("checkov") or str(REPO / ".venv-checkov" / "bin" / "checkov")
    assert Path(checkov).exists(), "checkov is installed by make (into .venv-checkov)"
    out, _ = rendered
    env = {
        **os.environ,
        "CKV_SKIP_PACKAGE_UPDATE_CHECK": "true",
        "BC_SKIP_MAPPING": "TRUE",
        "PATH": f"{helm_binary.parent}:{os.environ['PATH']}",
    }
    r = subprocess.run(
        [checkov, "-d", str(out / "chart"), "--framework", "helm", "--skip-download", "-o", "json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    reports = json.loads(r.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    failed = {
        f["check_id"] for rep in reports for f in rep.get("results", {}).get("failed_checks", [])
    }
    passed = sum(rep.get("summary", {}).get("passed", 0) for rep in reports)
    assert passed > 100  # checkov really ran its Kubernetes checks
    assert failed <= _accepted_checkov_failures(), failed - _accepted_checkov_failures()


def test_fractional_gpus_is_a_usage_error(verified_model):
    model, _, env = verified_model
    r = run_gkit("deploy", str(model), "--gpus", "0.5", "--target", "render", env=env)
    assert r.returncode == 2 and "whole number of GPUs" in r.stderr


def test_a_plan_that_does_not_fit_fails_with_its_numbers(verified_model, tmp_path):
    model, _, env = verified_model
    r = run_gkit(
        "deploy",
        str(model),
        "--gpus",
        "1",
        "--gpu",
        "l4",
        "--context",
        "4000000",
        "--concurrency",
        "64",
        "--output",
        str(tmp_path / "o"),
        env=env,
    )
    assert r.returncode == 1 and "per GPU on 1 x l4, the budget is" in r.stderr
    assert not (tmp_path / "o").exists()  # nothing written


def test_unverified_or_changed_model_is_refused(verified_model, tmp_path):
    model, pub, env = verified_model
    copy = tmp_path / "copy"
    shutil.copytree(model, copy)
    r = run_gkit("deploy", str(copy), "--gpus", "1", "--output", str(tmp_path / "o"), env=env)
    assert r.returncode == 1 and "no passing 'gkit verify' is recorded for" in r.stderr
    (copy / "config.json").write_text((copy / "config.json").read_text() + " ")
    r = run_gkit("deploy", str(copy), "--gpus", "1", "--public-key", str(pub), env=env)
    assert r.returncode == 1 and "'config.json' has changed since it was signed" in r.stderr
    other = tmp_path / "other"
    assert run_gkit("demo-model", str(other), "--seed", "7").returncode == 0
    r = run_gkit("deploy", str(other), "--gpus", "1", "--public-key", str(pub), env=env)
    assert r.returncode == 1 and "An unsigned model was never verified" in r.stderr
    r = run_gkit(
        "deploy",
        str(other),
        "--gpus",
        "1",
        "--allow-unverified",
        "--output",
        str(tmp_path / "o2"),
        "--json",
        env=env,
    )
    assert r.returncode == 0 and json.loads(r.stdout)["verification"].startswith("unverified")


def test_kubernetes_target_preflight_names_an_unreachable_cluster(verified_model, tmp_path):
    model, _, env = verified_model
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "dead",
                "clusters": [{"name": "dead", "cluster": {"server": "https://127.0.0.1:1"}}],
                "contexts": [{"name": "dead", "context": {"cluster": "dead", "user": "u"}}],
                "users": [{"name": "u", "user": {"token": "x"}}],
            }
        )
    )
    r = run_gkit(
        "deploy",
        str(model),
        "--gpus",
        "2",
        "--target",
        "kubernetes",
        env={**env, "KUBECONFIG": str(kubeconfig)},
        timeout=120,
    )
    assert r.returncode == 1 and "the Kubernetes API is not reachable" in r.stderr


def test_deploys_are_audited(rendered, verified_model):
    from granite_ops_kit.audit.store import Query, open_store

    _, result = rendered
    store = open_store(verified_model[2]["GKIT_AUDIT_DB"])
    deploys = list(store.records(Query(event="deployment.rendered")))
    assert deploys and deploys[0]["subject"]["digest"] == result["manifest_digest"]
    assert deploys[0]["details"]["gpus"] == 2 and result["action"] == "rendered"
    # nothing was applied: the only attempt (kubernetes, unreachable) is recorded as failed
    applied = list(store.records(Query(event="deployment.applied")))
    assert [r["outcome"] for r in applied] == ["failure"] * len(applied)
    assert all("not reachable" in r["details"]["failure"] for r in applied)


def test_the_rendered_verify_step_runs_as_rendered_with_its_own_trust_configmap(
    rendered, verified_model, tmp_path
):
    """The verify initContainer, with the files of the release's trust ConfigMap at the
    paths it names, passes on the model and fails on a tampered copy."""
    _, result = rendered
    model = verified_model[0]
    docs = _docs(Path(result["rendered"]).read_text())
    (configmap,) = [
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-trust")
    ]
    assert any(name.endswith(".pub") for name in configmap["data"])
    assert not any("PRIVATE" in text for text in configmap["data"].values())
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    verify = next(c for c in pod["initContainers"] if c["name"] == "verify")
    trust_volume = next(v for v in pod["volumes"] if v["name"] == "trust")
    assert trust_volume["configMap"]["name"] == configmap["metadata"]["name"]
    mount = next(m for m in verify["volumeMounts"] if m["name"] == "trust")
    trust_dir = tmp_path / "trust"
    trust_dir.mkdir()
    for name, text in configmap["data"].items():
        (trust_dir / name).write_text(text)
    model_path = next(a for a in verify["args"] if a.startswith("/models/"))

    def run_as_rendered(local_model: Path):
        args = [a.replace(mount["mountPath"], str(trust_dir)) for a in verify["args"]]
        args = [str(local_model) if a == model_path else a for a in args]
        assert verify["command"] == ["gkit"]
        return run_gkit(*args, env=verified_model[2])

    ok = run_as_rendered(model)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    tampered = tmp_path / "tampered"
    shutil.copytree(model, tampered)
    weights = tampered / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    bad = run_as_rendered(tampered)
    assert bad.returncode == 1 and "has changed since it was signed" in bad.stderr


def test_the_chart_alone_deploys_the_plan(rendered, helm_binary):
    """`helm template r out/chart` without `-f values.yaml` renders the planned GPUs."""
    out, _ = rendered
    r = subprocess.run(
        [str(helm_binary), "template", "granite", str(out / "chart")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    alone = next(d for d in _docs(r.stdout) if d["kind"] == "Deployment")
    planned = next(d for d in _helm_template(helm_binary, out) if d["kind"] == "Deployment")
    container = alone["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert (
        container["resources"] == planned["spec"]["template"]["spec"]["containers"][0]["resources"]
    )
    assert (out / "chart" / "values.defaults.yaml").exists()


ESCAPE_HATCHES = {
    "runtime": {
        "env": [{"name": "HF_HUB_OFFLINE", "value": "1"}],
        "envFrom": [{"secretRef": {"name": "proxy-settings"}}],
    },
    "extraVolumes": [{"name": "certs", "secret": {"secretName": "corp-ca"}}],
    "extraVolumeMounts": [{"name": "certs", "mountPath": "/etc/ssl/corp", "readOnly": True}],
    "podAnnotations": {"example.com/team": "ml-platform"},
    "podLabels": {"cost-center": "ml"},
    "runtimeClassName": "nvidia",
    "priorityClassName": "inference-high",
    "topologySpreadConstraints": [
        {
            "maxSkew": 1,
            "topologyKey": "topology.kubernetes.io/zone",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "granite-runtime"}},
        }
    ],
    "imagePullSecrets": [{"name": "registry-creds"}],
    "ingress": {
        "enabled": True,
        "className": "nginx",
        "annotations": {"nginx.ingress.kubernetes.io/proxy-read-timeout": "600"},
        "hosts": [{"host": "granite.example.com", "paths": [{"path": "/v1"}]}],
        "tls": [{"hosts": ["granite.example.com"], "secretName": "granite-tls"}],
    },
}


@pytest.fixture(scope="module")
def with_escape_hatches(rendered, helm_binary, tmp_path_factory):
    out, _ = rendered
    extra = tmp_path_factory.mktemp("hatches") / "hatches.yaml"
    extra.write_text(yaml.safe_dump(ESCAPE_HATCHES))
    return _helm_template(helm_binary, out, "-f", str(extra))


def test_escape_hatches_render_where_kubernetes_expects_them(with_escape_hatches):
    docs = with_escape_hatches
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    template = deployment["spec"]["template"]
    pod = template["spec"]
    runtime = next(c for c in pod["containers"] if c["name"] == "runtime")
    assert {"name": "HF_HUB_OFFLINE", "value": "1"} in runtime["env"]
    assert runtime["envFrom"] == ESCAPE_HATCHES["runtime"]["envFrom"]
    assert ESCAPE_HATCHES["extraVolumes"][0] in pod["volumes"]
    assert ESCAPE_HATCHES["extraVolumeMounts"][0] in runtime["volumeMounts"]
    assert template["metadata"]["annotations"]["example.com/team"] == "ml-platform"
    assert template["metadata"]["labels"]["cost-center"] == "ml"
    assert pod["runtimeClassName"] == "nvidia" and pod["priorityClassName"] == "inference-high"
    assert pod["topologySpreadConstraints"] == ESCAPE_HATCHES["topologySpreadConstraints"]
    assert pod["imagePullSecrets"] == [{"name": "registry-creds"}]
    ingress = next(d for d in docs if d["kind"] == "Ingress")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    path = ingress["spec"]["rules"][0]["http"]["paths"][0]
    assert path["path"] == "/v1" and path["backend"]["service"]["port"]["name"] == "http"
    assert path["backend"]["service"]["name"] == deployment["metadata"]["name"]


@pytest.mark.parametrize("version", ["1.29.0", "1.33.0"])
def test_escape_hatches_validate_strictly(with_escape_hatches, version):
    import kubernetes_validate

    for doc in with_escape_hatches:
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_schema_still_refuses_unknown_keys(rendered, helm_binary):
    out, _ = rendered
    r = subprocess.run(
        [str(helm_binary), "template", "granite", str(out / "chart"), "--set", "ingress.host=x"],
        capture_output=True,
        text=True,
    )
    assert r.returncode != 0 and "additional property host is not allowed" in r.stderr.lower()


def test_a_new_claim_filled_by_the_hf_loader_pulls_verifies_then_marks(
    verified_model, tmp_path, helm_binary
):
    """--model-loader hf: the new claim gets an initContainer that pulls the pinned commit
    into it with --ready-marker (verified before the marker, skipped once loaded), before
    the verify step; the objects validate strictly."""
    import kubernetes_validate

    model, _, env = verified_model
    commit = "0123456789abcdef0123456789abcdef01234567"
    r = run_gkit(
        "deploy", str(model), "--gpus", "1", "--target", "render", "--output", str(tmp_path),
        "--model-loader", "hf", "--hf-repo", "acme/granite-demo", "--hf-revision", commit,
        "--device", "cpu", "--json", env={**env, "GKIT_HELM": str(helm_binary)},
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    docs = _helm_template(helm_binary, tmp_path)
    assert any(d["kind"] == "PersistentVolumeClaim" for d in docs)
    pod = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["initContainers"]] == ["fetch", "verify"]
    fetch = pod["initContainers"][0]["args"]
    assert fetch[:4] == ["pull", "acme/granite-demo", "--revision", commit]
    assert fetch[fetch.index("--ready-marker") + 1] == "/models/.gkit-ready"
    assert fetch[fetch.index("--dest") + 1] == "/models/model"
    model_volume = next(v for v in pod["volumes"] if v["name"] == "model")
    assert "persistentVolumeClaim" in model_volume
    runtime = pod["containers"][0]["args"]
    assert runtime[runtime.index("--device") + 1] == "cpu"
    for doc in docs:
        kubernetes_validate.validate(doc, "1.33.0", strict=True)


def test_a_loader_with_an_existing_claim_is_a_usage_error(verified_model, tmp_path):
    model, _, env = verified_model
    r = run_gkit("deploy", str(model), "--gpus", "1", "--output", str(tmp_path),
                 "--model-loader", "hf", "--existing-claim", "models", env=env)  # fmt: skip
    assert r.returncode == 2 and "--model-loader fills a new claim" in r.stderr


def test_the_gate_reads_the_store_its_recorder_writes(tmp_path, tiny_hybrid, monkeypatch):
    """A verification recorded in one audit store does not let a deploy through that records
    into another: the gate looks for the passing verify where the deploy's own record goes,
    never in whatever GKIT_AUDIT_DB happens to name."""
    import shutil

    from granite_ops_kit.audit.events import StoreRecorder
    from granite_ops_kit.audit.store import Query, open_store
    from granite_ops_kit.demo.job import demo_key
    from granite_ops_kit.deploy.pipeline import DeployRequest, deploy
    from granite_ops_kit.errors import PolicyDenied
    from granite_ops_kit.supply.sign import SignRequest, sign
    from granite_ops_kit.supply.trust import TrustInputs
    from granite_ops_kit.supply.verify import VerifyRequest, verify

    model = tmp_path / "model"
    shutil.copytree(tiny_hybrid, model)
    private, public = demo_key(tmp_path)
    verified_in = StoreRecorder(f"sqlite:///{tmp_path / 'verified.db'}")
    elsewhere = StoreRecorder(f"sqlite:///{tmp_path / 'other.db'}")
    monkeypatch.setenv("GKIT_AUDIT_DB", verified_in.url)  # the env names the verified store
    sign(SignRequest(model_path=model, key=private), recorder=verified_in)
    trust = TrustInputs.from_files(public_key=public)
    verify(VerifyRequest(model_path=model, trust=trust), recorder=verified_in)
    req = DeployRequest(model_path=model, gpus=1, target="render", output_dir=tmp_path / "out")
    with pytest.raises(PolicyDenied, match="no passing 'gkit verify'"):
        deploy(req, "tester", elsewhere)
    refused = list(open_store(elsewhere.url).records(Query(event="deployment.rendered")))
    assert refused == []  # a refused gate renders nothing and records no deployment
    result = deploy(req, "tester", verified_in)
    assert result.action == "rendered" and result.manifest_digest.startswith("sha256:")
    assert Path(result.chart.values).is_file() and result.applied is None
    recorded = list(open_store(verified_in.url).records(Query(event="deployment.rendered")))
    assert [r["subject"]["digest"] for r in recorded] == [result.manifest_digest]
    assert recorded[0]["details"] == json.loads(json.dumps(result.to_json(), default=str))
