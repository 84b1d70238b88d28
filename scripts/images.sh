#!/usr/bin/env bash
# Makes sure the container images the tests and docker-compose.yml use exist locally:
#   debian:bookworm   a minimal Debian base (the workers' image builds on it)
#   redis:7           Debian's redis-server on that base, EXPOSE 6379
# Where a registry is reachable they are pulled. Where none is (the build machines), they are
# built from Debian's packages: debootstrap, then `docker import`, and tagged with the names a
# registry would give, so tests and compose run the same code everywhere.
# Idempotent: with both images present it returns in well under a second.
set -euo pipefail

DEBIAN_IMAGE=${DEBIAN_IMAGE:-debian:bookworm}
REDIS_IMAGE=${REDIS_IMAGE:-redis:7}
SUITE=${DEBIAN_SUITE:-bookworm}

die() { echo "images.sh: $*" >&2; exit 1; }
have() { docker image inspect "$1" >/dev/null 2>&1; }

command -v docker >/dev/null 2>&1 ||
    die "docker not found: install Docker Engine (Debian: apt-get install docker.io) and start it"
docker info >/dev/null 2>&1 ||
    die "the Docker daemon is not reachable (is it running? is DOCKER_HOST right?)"

have "$DEBIAN_IMAGE" && have "$REDIS_IMAGE" && exit 0

pull() { timeout 120 docker pull -q "$1" >/dev/null 2>&1; }
for image in "$DEBIAN_IMAGE" "$REDIS_IMAGE"; do
    have "$image" || pull "$image" || true
done
have "$DEBIAN_IMAGE" && have "$REDIS_IMAGE" && exit 0

echo "images.sh: no registry; building $DEBIAN_IMAGE and $REDIS_IMAGE from Debian packages" >&2

SUDO=
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || die "building images needs root (debootstrap, chroot)"
    SUDO=sudo
fi

# The mirrors apt already uses: the first "debian" and "debian-security" URIs configured.
apt_uris() {
    {
        grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{for (i = 2; i <= NF; i++) print $i}'
        grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list | awk '{print $2}'
    } | sed 's:/*$::'
}
MIRROR=${DEBIAN_MIRROR:-$(apt_uris | grep -E '/debian$' | head -n 1 || true)}
SECURITY=${DEBIAN_SECURITY_MIRROR:-$(apt_uris | grep -E '/debian-security$' | head -n 1 || true)}
[ -n "$MIRROR" ] || die "no Debian mirror found in apt's sources; set DEBIAN_MIRROR"

if ! command -v debootstrap >/dev/null 2>&1; then
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/limiter-images.XXXXXX")
rootfs="$work/rootfs"
cleanup() {
    $SUDO umount "$rootfs/proc" 2>/dev/null || true
    $SUDO rm -rf "$work"
}
trap cleanup EXIT

$SUDO debootstrap --variant=minbase "$SUITE" "$rootfs" "$MIRROR" >"$work/debootstrap.log" 2>&1 ||
    { tail -n 20 "$work/debootstrap.log" >&2; die "debootstrap failed"; }

if ! have "$DEBIAN_IMAGE"; then
    $SUDO tar -C "$rootfs" --numeric-owner -c . |
        docker import -c 'CMD ["bash"]' - "$DEBIAN_IMAGE" >/dev/null
    echo "images.sh: built $DEBIAN_IMAGE" >&2
fi

if ! have "$REDIS_IMAGE"; then
    if [ -n "$SECURITY" ]; then
        echo "deb $SECURITY $SUITE-security main" | $SUDO tee "$rootfs/etc/apt/sources.list.d/security.list" >/dev/null
    fi
    # No service may start inside the chroot.
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$rootfs/usr/sbin/policy-rc.d" >/dev/null
    $SUDO chmod 755 "$rootfs/usr/sbin/policy-rc.d"
    $SUDO mount -t proc proc "$rootfs/proc"
    $SUDO chroot "$rootfs" apt-get update -qq
    $SUDO chroot "$rootfs" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends redis-server >"$work/apt.log" 2>&1 ||
        { tail -n 20 "$work/apt.log" >&2; die "installing redis-server in the image failed"; }
    $SUDO chroot "$rootfs" apt-get clean
    $SUDO umount "$rootfs/proc"
    $SUDO rm -rf "$rootfs/var/lib/apt/lists/"* "$rootfs/usr/sbin/policy-rc.d"
    # No config file: redis-server then logs to stdout, where "Ready to accept connections"
    # tells testcontainers the server is up. Protected mode off: Docker's port forwarding
    # does not arrive from loopback.
    $SUDO tar -C "$rootfs" --numeric-owner -c . |
        docker import \
            -c 'EXPOSE 6379' \
            -c 'CMD ["redis-server", "--protected-mode", "no", "--save", "", "--appendonly", "no"]' \
            - "$REDIS_IMAGE" >/dev/null
    echo "images.sh: built $REDIS_IMAGE" >&2
fi
