#!/usr/bin/env bash
# Runs on the VM (train.sh copies and starts it): unpack the code, install it, and run
# training and TensorBoard as systemd services.
#
#   bash on_vm.sh ARCHIVE OUTPUT_DIR SHUTDOWN TRAINER_ARGS...
#   bash on_vm.sh --write-units DIR APP OUTPUT_DIR SHUTDOWN TRAINER_ARGS...
#       only writes the two scripts and two units below into DIR, for APP (tests/test_gpu_vm.py)
set -euo pipefail

# write_units DIR APP OUTPUT_DIR SHUTDOWN TRAINER_ARGS...
write_units() {
  local dir="$1" app="$2" output_dir="$3" shutdown="$4"
  shift 4
  local log="${TUNEWELL_LOG:-/var/log/tunewell/train.log}"  # the tests point it elsewhere
  # The trainer's flags live in a bash script, not in ExecStart: systemd has its own quoting
  # and no bash escapes, so printf %q's gs://b/\*.jsonl reached the trainer backslash and all
  # (systemd-analyze verify: "Ignoring unknown escape sequences") and matched no file. Bash
  # reads %q back exactly: globs, spaces and quotes arrive as typed.
  {
    echo '#!/usr/bin/env bash'
    printf 'cd %q\n' "$app"
    printf 'exec %q -m trainer.task' "$app/.venv/bin/python"
    printf ' %q' "$@" "--config.output_dir=$output_dir"
    printf '\n'
  } >"$dir/run_training.sh"

  # Runs however training ends (done, failed, stopped, preempted): the log goes to the
  # output directory (through the trainer's own gs:// layer; train.log is a file a run folder
  # may hold, so a relaunch after a preemption before config.json resumes there). A finished
  # run (report.json) disables the service, so a VM started again later neither retrains nor
  # powers off under its user. Then the VM powers off unless SHUTDOWN=0.
  {
    echo '#!/usr/bin/env bash'
    printf 'cd %q || exit 0\n' "$app"
    printf 'output_dir=%q log=%q\n' "$output_dir" "$log"
    # shellcheck disable=SC2016  # expanded when after_training.sh runs, not now
    echo '.venv/bin/python -c "import sys; from trainer import filesystem; filesystem.write_text(sys.argv[1], open(sys.argv[2]).read())" "$output_dir/train.log" "$log" || true'
    # shellcheck disable=SC2016
    echo 'if .venv/bin/python -c "import sys; from trainer import filesystem; sys.exit(not filesystem.exists(sys.argv[1]))" "$output_dir/report.json"; then systemctl disable tunewell-train; fi'
    if [[ "$shutdown" == 1 ]]; then echo 'systemctl poweroff'; fi
  } >"$dir/after_training.sh"

  cat >"$dir/tunewell-train.service" <<UNIT
[Unit]
Description=tunewell training
After=network-online.target
Wants=network-online.target

[Service]
Type=exec
WorkingDirectory=$app
Environment=TF_CPP_MIN_LOG_LEVEL=1
ExecStart=/bin/bash $app/run_training.sh
ExecStopPost=/bin/bash $app/after_training.sh
StandardOutput=append:$log
StandardError=append:$log

[Install]
WantedBy=multi-user.target
UNIT
  cat >"$dir/tunewell-tensorboard.service" <<UNIT
[Unit]
Description=TensorBoard for tunewell
After=network-online.target

[Service]
ExecStart=$app/.venv/bin/tensorboard --logdir $output_dir/logs --host localhost --port 6006
Restart=on-failure

[Install]
WantedBy=multi-user.target
UNIT
}

if [[ "${1:-}" == "--write-units" ]]; then
  shift
  write_units "$@"
  exit 0
fi

archive="$1" output_dir="$2" shutdown="$3"
shift 3
app=/opt/tunewell

sudo mkdir -p "$app" /var/log/tunewell
sudo tar -xzf "$archive" -C "$app"
if ! python3 -m venv --help >/dev/null 2>&1; then
  sudo apt-get update -q && sudo apt-get install -y -q python3-venv
fi
sudo python3 -m venv "$app/.venv"
# The GPU build of TensorFlow (CUDA and cuDNN come as wheels; the image has the driver).
sudo "$app/.venv/bin/pip" install -q "tensorflow[and-cuda]>=2.20,<2.22" -e "$app"

staging=$(mktemp -d)
write_units "$staging" "$app" "$output_dir" "$shutdown" "$@"
sudo install -m 0755 "$staging/run_training.sh" "$staging/after_training.sh" "$app/"
sudo install -m 0644 "$staging/tunewell-train.service" "$staging/tunewell-tensorboard.service" /etc/systemd/system/
rm -rf "$staging"
sudo systemctl daemon-reload
# enable: a spot VM started again after preemption resumes training from its checkpoint.
sudo systemctl enable --now tunewell-tensorboard tunewell-train
echo "tunewell-train started; log: /var/log/tunewell/train.log"
