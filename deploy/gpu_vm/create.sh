#!/usr/bin/env bash
# Create a Compute Engine GPU VM from a Deep Learning VM image (NVIDIA driver, CUDA,
# Python), ready for train.sh.
#
#   deploy/gpu_vm/create.sh --project=P [--zone=us-central1-a] [--name=tunewell-gpu] \
#       [--machine_type=g2-standard-8 --accelerator=nvidia-l4 --count=1] [--disk_gb=200] [--spot=1] [--dry_run]
#
# List current images: gcloud compute images list --project=deeplearning-platform-release --filter="family~common-cu"
set -euo pipefail
# shellcheck source=deploy/gpu_vm/common.sh
source "$(dirname "$0")/common.sh"

MACHINE_TYPE="g2-standard-8"
ACCELERATOR="nvidia-l4"
COUNT=1
DISK_GB=200
IMAGE_FAMILY="common-cu128-ubuntu-2204-nvidia-570"
SPOT=0
parse_flags "project zone name machine_type accelerator count disk_gb image_family spot" "$@"
require_project

args=(gcloud compute instances create "$NAME" --project="$PROJECT" --zone="$ZONE"
  --machine-type="$MACHINE_TYPE" --accelerator="type=$ACCELERATOR,count=$COUNT"
  --image-family="$IMAGE_FAMILY" --image-project=deeplearning-platform-release
  --boot-disk-size="${DISK_GB}GB" --boot-disk-type=pd-ssd
  --maintenance-policy=TERMINATE --metadata=install-nvidia-driver=True
  --scopes=cloud-platform)
if [[ "$SPOT" == 1 ]]; then
  # A preempted spot VM stops (not deleted): start it again and the training service
  # resumes from the run's last checkpoint.
  args+=(--provisioning-model=SPOT --instance-termination-action=STOP)
fi
run "${args[@]}"
echo "Next: deploy/gpu_vm/train.sh --project=$PROJECT --zone=$ZONE --name=$NAME --output_dir=gs://BUCKET/runs/NAME"
