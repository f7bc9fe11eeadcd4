#!/usr/bin/env bash
# Installs the Debian packages the build and the tests need, once.
# Skips apt entirely when everything is already there.
set -euo pipefail
PACKAGES=(clang llvm libbpf-dev libelf-dev zlib1g-dev pkg-config gcc make
          iproute2 iptables nftables bpftool iperf3 python3-venv)
missing=()
for p in "${PACKAGES[@]}"; do
  # "dpkg -s" also succeeds for a removed package whose config files remain.
  [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" = "install ok installed" ] || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "missing system packages: ${missing[*]}; run as root or: sudo apt-get install ${missing[*]}" >&2
  exit 1
fi
echo "installing system packages: ${missing[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
