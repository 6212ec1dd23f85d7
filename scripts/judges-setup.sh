#!/usr/bin/env bash
# Install the outside judges used by tests/judges.rs at pinned versions, into .venv at the
# repo root. Idempotent: does nothing when the pinned versions are already there.
# kubectl is expected on the machine (it carries kustomize).
set -euo pipefail

KUBERNETES_VALIDATE_VERSION=1.37.0
CHECKOV_VERSION=3.3.30

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
python="${PYTHON:-python3}"

# pip's list is read whole before it is searched: `pip freeze | grep -q` under pipefail fails
# on a good venv whenever grep exits at its first match before pip has written everything
# (pip then dies of a broken pipe).
have() {
    [ -x "$venv/bin/kubernetes-validate" ] && [ -x "$venv/bin/checkov" ] || return 1
    local frozen
    frozen="$("$venv/bin/pip" freeze --disable-pip-version-check 2>/dev/null)" || return 1
    grep -qx "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" <<<"$frozen" &&
        grep -qx "checkov==$CHECKOV_VERSION" <<<"$frozen"
}

if have; then
    echo "judges-setup: kubernetes-validate $KUBERNETES_VALIDATE_VERSION and checkov $CHECKOV_VERSION already in $venv"
    exit 0
fi

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check \
    "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" \
    "checkov==$CHECKOV_VERSION"
have || { echo "judges-setup: install did not give the pinned versions" >&2; exit 2; }
echo "judges-setup: installed kubernetes-validate $KUBERNETES_VALIDATE_VERSION and checkov $CHECKOV_VERSION into $venv"
