#!/usr/bin/env bash
# Install every service the test suite starts, or stop with the exact command that installs them.
#
# `make test` and `make test-slow` run this before pytest, and `.ci/run` through them: one
# install path. Each service is one `have_<service>` check (looking where its test helper
# looks) plus the Debian packages that provide it, listed in SERVICES. When everything is
# present this only checks files (no apt, no network). Otherwise it installs the missing
# packages with apt-get, as root directly or through sudo; where it cannot (no apt-get, or
# neither root nor usable sudo) it exits 1 before any test runs, printing the command to run.
# MEDSEG_PROVISION_CHECK_ONLY=1 never installs: it only checks, and stops the same way.
#
# To add a service (Slurm, an object store, Chromium...): write have_<name>, add
# "<name>:<debian packages>" to SERVICES.
set -euo pipefail

# tests/postgres_server.py: initdb, pg_ctl and postgres from one folder, found beside initdb on
# PATH, then under /usr/lib/postgresql/*/bin.
have_postgres() {
  local dir
  for dir in "$(dirname "$(command -v initdb || echo /nonexistent/initdb)")" /usr/lib/postgresql/*/bin; do
    [[ -x $dir/initdb && -x $dir/pg_ctl && -x $dir/postgres ]] && return 0
  done
  return 1
}

# tests/orthanc_server.py: Orthanc on PATH or /usr/sbin (often not on a user's PATH), the
# DICOMweb plugin in $ORTHANC_PLUGINS_DIR or /usr/share/orthanc/plugins.
have_orthanc() {
  { command -v Orthanc >/dev/null || [[ -x /usr/sbin/Orthanc ]]; } &&
    [[ -f ${ORTHANC_PLUGINS_DIR:-/usr/share/orthanc/plugins}/libOrthancDicomWeb.so ]]
}

# tests/slurm_cluster.py: the daemons (munged, slurmctld, slurmd) and the client commands on
# PATH or in /usr/sbin, /usr/bin (where it looks too).
have_slurm() {
  local name
  for name in munged slurmctld slurmd sbatch squeue scontrol scancel srun sinfo; do
    command -v "$name" >/dev/null || [[ -x /usr/sbin/$name || -x /usr/bin/$name ]] || return 1
  done
}

# service:debian packages (space separated)
SERVICES=(
  "postgres:postgresql"
  "orthanc:orthanc orthanc-dicomweb"
  "slurm:slurm-wlm munge"
)

missing_services=()
missing_packages=()
for entry in "${SERVICES[@]}"; do
  service=${entry%%:*}
  if ! "have_$service"; then
    missing_services+=("$service")
    read -r -a packages <<<"${entry#*:}"
    missing_packages+=("${packages[@]}")
  fi
done
[[ ${#missing_services[@]} -eq 0 ]] && exit 0

install_command="apt-get update && apt-get install -y --no-install-recommends ${missing_packages[*]}"
refuse() {
  echo "error: services the tests start are not installed: ${missing_services[*]};" \
    "$1. Install them and run the tests again; on Debian/Ubuntu:" >&2
  echo "  sudo sh -c '$install_command'" >&2
  exit 1
}
[[ ${MEDSEG_PROVISION_CHECK_ONLY:-0} == 0 ]] ||
  refuse "MEDSEG_PROVISION_CHECK_ONLY=1 forbids installing them"
command -v apt-get >/dev/null ||
  refuse "this machine has no apt-get (install the Debian packages' equivalents with its package manager)"
if [[ $(id -u) -eq 0 ]]; then
  as_root=()
elif command -v sudo >/dev/null && { [[ -t 0 ]] || sudo -n true 2>/dev/null; }; then
  as_root=(sudo)  # asks for a password on a terminal; without one it must be password-less
else
  refuse "installing them needs root or sudo"
fi

echo "provision: installing ${missing_packages[*]} for ${missing_services[*]}" >&2
# The packages' postinst may try to start system services (harmless without systemd); the
# tests start their own servers on free loopback ports.
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
  apt-get install -y -qq --no-install-recommends "${missing_packages[@]}"
for service in "${missing_services[@]}"; do
  "have_$service" || {
    echo "error: installed ${missing_packages[*]}, but $service is still not found where" \
      "the tests look (see have_$service in $0)" >&2
    exit 1
  }
done
