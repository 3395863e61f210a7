#!/usr/bin/env bash
# Launch a gkd-jax run on every host of a Cloud TPU slice (e.g. v5p-64 = 8 hosts x 4 chips).
#
#   TPU=my-v5p-64 ZONE=us-east5-a WORKDIR=/mnt/bucket/runs/g2 \
#     experiments/launch_tpu_pod.sh configs/gemma2_9b_to_2b.py --config.student.path=... ...
#
# Every host runs the same command; `--multihost` makes each call jax.distributed.initialize(), which
# discovers the slice's coordinator by itself on TPU VMs. WORKDIR must be shared by all hosts (a
# gcsfuse-mounted bucket or NFS): Orbax writes the checkpoint shards of every host there, process 0 the
# metrics and the exported student. Re-running the same command resumes from the last checkpoint;
# SIGTERM (maintenance events, preemption) makes all hosts save at the same step and exit.
set -euo pipefail
: "${TPU:?set TPU to the TPU VM name}" "${ZONE:?set ZONE}" "${WORKDIR:?set WORKDIR (shared by all hosts)}"
CONFIG=${1:?usage: $0 CONFIG [--config.overrides...]}
shift
REPO=${REPO:-gkd_jax}
TARBALL=$(mktemp --suffix=.tar.gz)
git archive --format=tar.gz -o "$TARBALL" HEAD  # the committed tree only: no .venv, no workdirs
gcloud compute tpus tpu-vm scp --zone "$ZONE" --worker=all "$TARBALL" "$TPU:gkd_jax.tar.gz"
gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command "
  mkdir -p $REPO && tar -xzf gkd_jax.tar.gz -C $REPO && cd $REPO && python3 -m venv .venv && .venv/bin/pip install -q -e . 'jax[tpu]==0.10.2' &&
  .venv/bin/gkd-jax train --config=$CONFIG --workdir=$WORKDIR --multihost $*"
