#!/usr/bin/env bash
# Delete the VM and its boot disk. The results are in the output directory on
# Cloud Storage, not on the VM.
#
#   deploy/gpu_vm/teardown.sh --project=P --zone=Z --name=tunewell-gpu [--dry_run]
set -euo pipefail
# shellcheck source=deploy/gpu_vm/common.sh
source "$(dirname "$0")/common.sh"

parse_flags "project zone name" "$@"
require_project
run gcloud compute instances delete "$NAME" --project="$PROJECT" --zone="$ZONE" --delete-disks=all --quiet
