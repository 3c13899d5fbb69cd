#!/usr/bin/env bash
# Forward the VM's TensorBoard (the tunewell-tensorboard service, port 6006) to
# http://localhost:PORT here, until Ctrl-C.
#
#   deploy/gpu_vm/tensorboard.sh --project=P --zone=Z --name=tunewell-gpu [--port=6006] [--dry_run]
set -euo pipefail
# shellcheck source=deploy/gpu_vm/common.sh
source "$(dirname "$0")/common.sh"

PORT=6006
parse_flags "project zone name port" "$@"
require_project
echo "TensorBoard: http://localhost:$PORT (Ctrl-C to stop forwarding)"
run gcloud compute ssh "$NAME" --project="$PROJECT" --zone="$ZONE" -- -N -L "$PORT:localhost:6006"
