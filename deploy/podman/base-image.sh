#!/usr/bin/env bash
# A local stand-in for the Docker Hub base image of deploy/Dockerfile, for
# machines that cannot pull from a registry (tests/containers, air-gapped CI):
#
#   bash deploy/podman/base-image.sh [IMAGE]
#
# Builds Debian bookworm (debootstrap --variant=minbase) with Python 3.11, venv
# and pip, and imports it into podman as IMAGE (default
# docker.io/library/python:3.11-slim-bookworm, the name the Dockerfiles use), so
# the Dockerfiles build unchanged. Nothing is done when IMAGE already exists.
# It is NOT the official image: Python is Debian's (/usr/bin/python3.11), not a
# build in /usr/local. Needs root, debootstrap and a Debian mirror
# (TFSTREAM_DEBIAN_MIRROR, default http://deb.debian.org/debian).
set -euo pipefail

image="${1:-docker.io/library/python:3.11-slim-bookworm}"
mirror="${TFSTREAM_DEBIAN_MIRROR:-http://deb.debian.org/debian}"

if podman image exists "$image"; then
  echo "base-image.sh: $image already exists" >&2
  exit 0
fi
for tool in debootstrap podman; do
  command -v "$tool" >/dev/null || { echo "base-image.sh: $tool is required" >&2; exit 1; }
done

rootfs="$(mktemp -d "${TMPDIR:-/tmp}/tfstream-rootfs.XXXXXX")"
trap 'rm -rf "$rootfs"' EXIT
echo "base-image.sh: debootstrap bookworm into $rootfs" >&2
debootstrap --variant=minbase \
  --include=python3.11,python3-venv,python3-pip,python-is-python3,ca-certificates \
  bookworm "$rootfs" "$mirror" >&2
# What the slim images leave out too: package lists and caches.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb
tar --numeric-owner -C "$rootfs" -c . | podman import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' \
  --message "tfstream stand-in for python:3.11-slim-bookworm (debootstrap minbase)" \
  - "$image" >&2
echo "base-image.sh: imported $image" >&2
