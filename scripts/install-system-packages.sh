#!/usr/bin/env bash
# Installs the Debian packages the test suite needs, only those that are missing.
# Needs root (CI and the workplace machines run as root); elsewhere it says what to install.
set -euo pipefail

need=()
command -v pg_ctl >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || need+=(postgresql)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)  # the tests start it only with --bridge=none
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)  # the tests' local base image
command -v podman >/dev/null 2>&1 || need+=(podman catatonit runc)  # podman kube play of the rendered pod

if [ ${#need[@]} -eq 0 ]; then
    echo "system packages: all present"
    exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "system packages missing: ${need[*]}; install them with your package manager (tests that need them will fail)" >&2
    exit 0
fi
echo "system packages: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}"
