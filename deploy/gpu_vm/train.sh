#!/usr/bin/env bash
# Copy this checkout to the VM and start training there under systemd: it survives
# SSH disconnects, writes its log to the output directory, and powers the VM off when
# training ends (a stopped VM costs only its disk).
#
#   deploy/gpu_vm/train.sh --project=P --zone=Z --name=tunewell-gpu --output_dir=gs://BUCKET/runs/exp1 \
#       --config=configs/distilgpt2.py [--shutdown=0] [--dry_run] -- --config.data.train_files=gs://BUCKET/train.jsonl
set -euo pipefail
# shellcheck source=deploy/gpu_vm/common.sh
source "$(dirname "$0")/common.sh"

OUTPUT_DIR=""
CONFIG="configs/distilgpt2.py"
SHUTDOWN=1
parse_flags "project zone name output_dir config shutdown" "$@"
require_project
[[ "$OUTPUT_DIR" == gs://* ]] || die "--output_dir=gs://BUCKET/PATH is required: the VM's disk is not where results should live"
[[ -f "$CONFIG" ]] || die "--config=$CONFIG: no such file in this checkout"

cd "$(dirname "$0")/../.."
archive="/tmp/tunewell-$NAME.tar.gz"
run git archive --format=tar.gz -o "$archive" HEAD
run gcloud compute scp "$archive" deploy/gpu_vm/on_vm.sh "$NAME:" --project="$PROJECT" --zone="$ZONE"
remote=(bash on_vm.sh "$(basename "$archive")" "$OUTPUT_DIR" "$SHUTDOWN" --config="$CONFIG" "${EXTRA_ARGS[@]}")
run gcloud compute ssh "$NAME" --project="$PROJECT" --zone="$ZONE" --command="$(printf '%q ' "${remote[@]}")"
cat <<NEXT
Training runs as the systemd service tunewell-train on $NAME.
  Log:         gcloud compute ssh $NAME --zone=$ZONE -- sudo journalctl -fu tunewell-train
  TensorBoard: deploy/gpu_vm/tensorboard.sh --project=$PROJECT --zone=$ZONE --name=$NAME, then http://localhost:6006
               (or from here: make tensorboard LOGDIR=$OUTPUT_DIR/logs)
  Results:     $OUTPUT_DIR (train.log is copied there when training ends)
  Tear down:   deploy/gpu_vm/teardown.sh --project=$PROJECT --zone=$ZONE --name=$NAME
NEXT
