#!/usr/bin/env bash
# Runs on the VM (train.sh copies and starts it): unpack the code, install it, and run
# training and TensorBoard as systemd services.
#
#   bash on_vm.sh ARCHIVE OUTPUT_DIR SHUTDOWN TRAINER_ARGS...
set -euo pipefail
archive="$1" output_dir="$2" shutdown="$3"
shift 3
app=/opt/tunewell
log=/var/log/tunewell/train.log

sudo mkdir -p "$app" /var/log/tunewell
sudo tar -xzf "$archive" -C "$app"
if ! python3 -m venv --help >/dev/null 2>&1; then
  sudo apt-get update -q && sudo apt-get install -y -q python3-venv
fi
sudo python3 -m venv "$app/.venv"
# The GPU build of TensorFlow (CUDA and cuDNN come as wheels; the image has the driver).
sudo "$app/.venv/bin/pip" install -q "tensorflow[and-cuda]>=2.20,<2.22" -e "$app"

# Runs however training ends (done, failed, stopped): the log goes to the output
# directory (through the trainer's own gs:// layer), then the VM powers off unless SHUTDOWN=0.
sudo tee "$app/after_training.sh" >/dev/null <<AFTER
#!/usr/bin/env bash
cd $app && .venv/bin/python -c "import sys; from trainer import filesystem; filesystem.write_text(sys.argv[1], open(sys.argv[2]).read())" $output_dir/train.log $log
if [[ "$shutdown" == 1 ]]; then /usr/bin/systemctl poweroff; fi
AFTER
sudo tee /etc/systemd/system/tunewell-train.service >/dev/null <<UNIT
[Unit]
Description=tunewell training
After=network-online.target
Wants=network-online.target

[Service]
Type=exec
WorkingDirectory=$app
Environment=TF_CPP_MIN_LOG_LEVEL=1
ExecStart=$app/.venv/bin/python -m trainer.task $(printf '%q ' "$@") --config.output_dir=$output_dir
ExecStopPost=/bin/bash $app/after_training.sh
StandardOutput=append:$log
StandardError=append:$log

[Install]
WantedBy=multi-user.target
UNIT
sudo tee /etc/systemd/system/tunewell-tensorboard.service >/dev/null <<UNIT
[Unit]
Description=TensorBoard for tunewell
After=network-online.target

[Service]
ExecStart=$app/.venv/bin/tensorboard --logdir $output_dir/logs --host localhost --port 6006
Restart=on-failure

[Install]
WantedBy=multi-user.target
UNIT
sudo systemctl daemon-reload
# enable: a spot VM started again after preemption resumes training from its checkpoint.
sudo systemctl enable --now tunewell-tensorboard tunewell-train
echo "tunewell-train started; log: $log"
