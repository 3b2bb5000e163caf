"""`--target kubernetes`: preflight with the kubernetes client, then `helm upgrade --install
--wait`, then the rollout as the API reports it. Each preflight failure is one sentence."""

from __future__ import annotations

from pathlib import Path

from granite_ops_kit.deploy.results import HelmRelease
from granite_ops_kit.errors import CheckFailed

GPU = "nvidia.com/gpu"


def _client(context: str | None):
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    try:
        config.load_kube_config(context=context)
    except (ConfigException, FileNotFoundError, TypeError) as e:
        try:
            config.load_incluster_config()
        except ConfigException:
            raise CheckFailed(
                f"no Kubernetes context{f' {context}' if context else ''} to deploy to: {e}"
            ) from None
    return client


def preflight(
    gpus: int, namespace: str, storage_class: str | None, context: str | None
) -> list[str]:
    """The nodes a pod with this many GPUs can schedule on; refuses when there are none."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    client = _client(context)
    core = client.CoreV1Api()
    try:
        nodes = core.list_node(_request_timeout=10).items
    except (ApiException, HTTPError, OSError) as e:
        raise CheckFailed(
            f"the Kubernetes API is not reachable ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:160]})."
        ) from None
    fitting = [
        n.metadata.name for n in nodes if int((n.status.allocatable or {}).get(GPU, "0")) >= gpus
    ]
    if not fitting:
        most = max((int((n.status.allocatable or {}).get(GPU, "0")) for n in nodes), default=0)
        raise CheckFailed(
            f"no node offers {gpus} allocatable {GPU} (the most on one node is "
            f"{most}); a pod with {gpus} GPUs would never schedule."
        )
    try:
        core.read_namespace(namespace, _request_timeout=10)
    except ApiException as e:
        if e.status == 404:
            raise CheckFailed(
                f"namespace {namespace} does not exist; create it first "
                f"(kubectl create namespace {namespace})."
            ) from None
        raise
    if storage_class:
        try:
            client.StorageV1Api().read_storage_class(storage_class, _request_timeout=10)
        except ApiException as e:
            if e.status == 404:
                raise CheckFailed(f"storage class {storage_class} does not exist.") from None
            raise
    return fitting


def install(
    release: str,
    chart: Path,
    values: Path,
    namespace: str,
    context: str | None,
    timeout: str = "45m",
) -> HelmRelease:
    from granite_ops_kit.deploy import helm

    args = [
        "upgrade",
        "--install",
        release,
        str(chart),
        "-f",
        str(values),
        "--namespace",
        namespace,
        "--wait",
        "--timeout",
        timeout,
    ]
    if context:
        args += ["--kube-context", context]
    helm.helm(*args, timeout=3 * 3600)
    status = helm.helm("status", release, "--namespace", namespace, "-o", "json").stdout
    import json

    info = json.loads(status)
    return HelmRelease(
        release=release, revision=info.get("version"), status=info.get("info", {}).get("status")
    )
