#!/usr/bin/env bash
# Run the whole tsk8s test suite. Installs what the tests need first:
#   - Debian packages (always --no-install-recommends: wireguard-tools would otherwise pull in
#     a kernel): wireguard-go, wireguard-tools, iperf3, iproute2, iputils-ping, and iptables
#     and busybox (tests/tailscale_image.rs: containerboot's DNAT rule and the image's wget);
#   - the outside judges (kubernetes-validate, checkov) pinned, in a venv at .venv.
# kubectl must already be on the machine (it is on ours; it is used offline only).
# With TSK8S_REQUIRE_PRIVILEGED_TESTS=1 (set by .ci/run) tests that need root, network
# namespaces, wireguard-go or a judge fail instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for pair in wireguard-go:wireguard-go wg:wireguard-tools iperf3:iperf3 ip:iproute2 ping:iputils-ping iptables-legacy:iptables busybox:busybox; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
if [ "${#need[@]}" -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        echo "installing: ${need[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    else
        echo "not root: cannot install ${need[*]}; the tests that need them will skip (or fail under CI)"
    fi
fi

if [ -x scripts/judges-setup.sh ]; then
    scripts/judges-setup.sh
fi
export PATH="$PWD/.venv/bin:$PATH"

cargo test --workspace --locked
