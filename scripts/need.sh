#!/usr/bin/env bash
# need.sh COMMAND PACKAGE: make sure COMMAND is on PATH, installing the Debian PACKAGE with
# apt-get when it is missing (as root; `apt-get update` first only if the install fails).
set -euo pipefail
command_name=$1 package=$2
command -v "$command_name" >/dev/null 2>&1 && exit 0
if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    echo "missing: $command_name (as root: apt-get install -y $package)" >&2
    exit 1
fi
echo "installing $package (for $command_name)" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q "$package" >/dev/null ||
    { apt-get update -q >/dev/null && apt-get install -y -q "$package" >/dev/null; } ||
    { echo "apt-get install $package failed" >&2; exit 1; }
command -v "$command_name" >/dev/null 2>&1 || { echo "$package did not provide $command_name" >&2; exit 1; }
