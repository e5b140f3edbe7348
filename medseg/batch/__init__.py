"""``medseg batch``: segment every scan of a hospital tree, resumably, in parallel, sharded.

One module per job:

* ``sharding``: which scans a shard owns (``I/N``, from the flag or Slurm/Kubernetes variables);
* ``scans``: the inventory of the tree (picklable scans with a stable key, corrupt files);
* ``layout``: per-scan output folders that appear atomically, failure records;
* ``executor``: worker processes that may die without taking the batch down;
* ``worker``: one scan in a worker (``medseg.infer.stage.predict_task``, as ``medseg predict``);
* ``summary``: ``summary.csv`` and ``failures.jsonl``, rebuilt from the per-scan records;
* ``mlflow_run``: one MLflow run per invocation, never fatal;
* ``runner``: ``run_batch``, tying them together.

Design choices, and why:

* Completeness is a file: ``OUT_DIR/<case_id>/result.json`` exists iff the scan is done, because
  a scan is written in a staging folder and renamed into place. Resuming after SIGKILL needs no
  journal, and shards can share OUT_DIR without coordination.
* Every scan runs in a worker process, also with ``--workers 1``: a segfault or OOM kill then
  costs one scan (retried alone, then recorded "worker process died"), where an in-process run
  would die on the same scan at every restart.
* Workers are forked from a ``forkserver`` that imports torch, mlflow and the network code once
  (``spawn`` would import them in every worker, and again after each worker death); each
  worker takes on the parent's current environment and working folder explicitly.
* The parent never loads the model's networks, it reads only its input channels from the
  package's ``MLmodel`` (with several, a case's nnU-Net channel files ``<case>_0000``,
  ``<case>_0001``... are one scan): a model that does not load in the workers stops the batch
  with ``ModelLoadError`` before any scan is recorded as failed.
* Anonymous by default: case ids are hashes, failure reasons have the scan's paths and folder
  names replaced by ``<scan>``, ``source`` is written only with ``--case-ids folder``, and
  MLflow gets no paths, UIDs or case ids (a model folder is logged as a hash; with folder ids
  the summary artifacts are withheld).
* A ``.dcm``/``.dicom``/``.ima`` file that is not DICOM at all is a failure, not an ignored
  file: in a hospital export it is a broken transfer.

Limits: with ``--case-ids folder``, two inputs with the same name get ``_2`` suffixes in
discovery order, which a new file can change (hash ids are stable). A truncated DICOM file whose
header still parses is classified by discovery as a skipped non-image file, not a failure.
"""

from medseg.batch.sharding import Shard, resolve_shard, shard_from_environment

__all__ = ["Shard", "resolve_shard", "shard_from_environment"]
