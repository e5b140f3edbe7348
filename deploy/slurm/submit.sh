#!/usr/bin/env bash
# Submit a medseg batch: the array job (one task per shard), then the summary step once every
# task has ended. Run it from the folder that holds medseg.sif; logs go to ./logs/.
#
#   export MLFLOW_TRACKING_URI=https://mlflow.example.org   # or put it in ~/.config/medseg/mlflow.env
#   SCANS_ROOT=/shared/scans OUT_DIR=/shared/out MODEL_URI=models:/hippocampus-3d@champion \
#       deploy/slurm/submit.sh [extra sbatch options for the array, e.g. --array=0-15 -p cpu]
#
# A models:/NAME@ALIAS URI is resolved here, once, to models:/NAME/VERSION, so every shard uses
# the same model even if the alias moves while the array runs. Other variables: see
# medseg-batch.sbatch (CONTAINER_RUNTIME=none: no container, the medseg and python on PATH).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
: "${SCANS_ROOT:?set SCANS_ROOT}" "${OUT_DIR:?set OUT_DIR}" "${MODEL_URI:?set MODEL_URI}"
export SCANS_ROOT OUT_DIR MODEL_URI
export MEDSEG_IMAGE=${MEDSEG_IMAGE:-$PWD/medseg.sif}
RUNTIME=${CONTAINER_RUNTIME:-$(command -v apptainer || command -v singularity || true)}
MLFLOW_ENV_FILE=${MLFLOW_ENV_FILE:-$HOME/.config/medseg/mlflow.env}
if [[ -f $MLFLOW_ENV_FILE ]]; then
  set -a
  # shellcheck source=/dev/null
  source "$MLFLOW_ENV_FILE"
  set +a
fi

if [[ -z $RUNTIME ]]; then
  echo "error: neither apptainer nor singularity is on PATH (try: module load apptainer)" >&2
  exit 1
fi
if [[ $MODEL_URI =~ ^models:/([^/@]+)@(.+)$ ]]; then
  : "${MLFLOW_TRACKING_URI:?set MLFLOW_TRACKING_URI to the team MLflow server}"
  python=("$RUNTIME" exec --env PYTHONNOUSERSITE=1 "$MEDSEG_IMAGE" python)
  [[ $RUNTIME == none ]] && python=(python) # medseg's venv on PATH, no container
  version=$(
    "${python[@]}" -c \
      'import sys; from mlflow import MlflowClient
print(MlflowClient().get_model_version_by_alias(sys.argv[1], sys.argv[2]).version)' \
      "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}"
  )
  echo "$MODEL_URI is version $version"
  MODEL_URI="models:/${BASH_REMATCH[1]}/$version"
fi

mkdir -p logs "$OUT_DIR"
array_job=$(sbatch --parsable "$@" "$here/medseg-batch.sbatch")
array_job=${array_job%%;*} # --parsable prints "jobid[;cluster]"
summary_job=$(sbatch --parsable --dependency="afterany:$array_job" \
  "$here/medseg-batch-summary.sbatch")
summary_job=${summary_job%%;*}
echo "array job $array_job ($MODEL_URI), summary job $summary_job; outputs in $OUT_DIR"
echo "follow: squeue -j $array_job,$summary_job   logs: logs/medseg-batch-${array_job}_*.out"
