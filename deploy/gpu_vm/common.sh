# Shared by the GPU VM scripts: flag parsing and the dry-run switch. Sourced, not run.
# shellcheck shell=bash

# Read by the scripts that source this file.
# shellcheck disable=SC2034
{
  PROJECT="${GOOGLE_CLOUD_PROJECT:-}"
  ZONE="us-central1-a"
  NAME="tunewell-gpu"
  DRY_RUN=0
  EXTRA_ARGS=()
}

die() {
  echo "error: $*" >&2
  exit 2
}

# run CMD...: print it (--dry_run) or run it. The printed line is the exact command,
# quoted so that it can be pasted into a shell.
run() {
  if [[ "$DRY_RUN" == 1 ]]; then
    printf '$'
    printf ' %q' "$@"
    printf '\n'
  else
    "$@"
  fi
}

# parse_flags "NAME ..." "$@": --key=value or --key value for each NAME (--machine_type
# sets MACHINE_TYPE), --dry_run, and everything after -- into EXTRA_ARGS. An unknown
# flag is an error that lists the known ones.
parse_flags() {
  local flag value upper known
  local -a FLAG_NAMES
  read -r -a FLAG_NAMES <<< "$1"
  shift
  # shellcheck disable=SC2034  # EXTRA_ARGS is read by the sourcing script
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --) shift; EXTRA_ARGS=("$@"); return ;;
      --dry_run) DRY_RUN=1; shift; continue ;;
      --help|-h) echo "flags: --dry_run ${FLAG_NAMES[*]/#/--} [-- trainer overrides]"; exit 0 ;;
      --*=*) flag="${1%%=*}"; value="${1#*=}"; shift ;;
      --*) flag="$1"; [[ $# -ge 2 ]] || die "$flag needs a value"; value="$2"; shift 2 ;;
      *) die "unexpected '$1': trainer overrides go after --" ;;
    esac
    flag="${flag#--}"
    known=0
    for name in "${FLAG_NAMES[@]}"; do
      if [[ "$name" == "$flag" ]]; then known=1; fi
    done
    if [[ "$flag" == config.* ]]; then
      die "--$flag: trainer overrides go after --, e.g. -- --$flag=$value"
    fi
    [[ "$known" == 1 ]] || die "unknown flag --$flag (known: --dry_run ${FLAG_NAMES[*]/#/--})"
    upper="$(echo "$flag" | tr '[:lower:]' '[:upper:]')"
    printf -v "$upper" '%s' "$value"
  done
}

require_project() {
  [[ -n "$PROJECT" ]] || PROJECT="$(gcloud config get-value project 2>/dev/null || true)"
  [[ -n "$PROJECT" ]] || die "--project is required (or gcloud config set project PROJECT)"
}
