#!/bin/sh
# r3s installer: `curl -sfL <url>/install.sh | sh -` installs and starts an r3s server;
# with R3S_URL (and R3S_TOKEN or R3S_TOKEN_FILE) it installs an agent that joins that server.
#
# Variables (k3s's names, with R3S):
#   R3S_URL, R3S_TOKEN, R3S_TOKEN_FILE, R3S_KUBECONFIG_MODE and every other R3S_* variable:
#                              written to the service's env file (mode 0600)
#   INSTALL_R3S_EXEC           command and flags, e.g. "server --tls-san pi.lan" ("server" by
#                              default, "agent" when R3S_URL is set); extra script arguments append
#   INSTALL_R3S_VERSION        release to install (default: the latest)
#   INSTALL_R3S_DOWNLOAD_URL   where releases live (default: the project's GitHub releases); files
#                              are fetched from <url>/<version>/r3s-<server|agent>-<arch> and
#                              <url>/<version>/sha256sum-<arch>.txt
#   INSTALL_R3S_SKIP_DOWNLOAD  true: use the binary already in the bin dir (air-gap)
#   INSTALL_R3S_BIN_DIR        default /usr/local/bin (/opt/bin when that is read-only)
#   INSTALL_R3S_SYSTEMD_DIR    default /etc/systemd/system
#   INSTALL_R3S_SKIP_ENABLE, INSTALL_R3S_SKIP_START, INSTALL_R3S_FORCE_RESTART
#   INSTALL_R3S_READY_TIMEOUT  seconds to wait for the service to be ready (default 300)
#   ARCH                       override the detected architecture (amd64, arm64, armhf, or a
#                              static build: amd64-musl, arm64-musl, armhf-musl)
#
# Re-running with another version upgrades in place; the service restarts only when its binary,
# unit or env file changed.
set -e

GITHUB_URL=${GITHUB_URL:-https://github.com/r3s-io/r3s/releases}
DOWNLOAD_URL=${INSTALL_R3S_DOWNLOAD_URL:-${GITHUB_URL}/download}
SYSTEMD_DIR=${INSTALL_R3S_SYSTEMD_DIR:-/etc/systemd/system}
READY_TIMEOUT=${INSTALL_R3S_READY_TIMEOUT:-300}

info() { echo "[INFO]  $*"; }
warn() { echo "[WARN]  $*" >&2; }
fatal() {
    echo "[ERROR] $*" >&2
    exit 1
}

# --- what to install -----------------------------------------------------------------------
setup_command() {
    if [ -n "${R3S_URL}" ]; then
        case "${R3S_URL}" in
            https://*) ;;
            *) fatal "R3S_URL must start with https:// (got '${R3S_URL}')" ;;
        esac
    fi
    # INSTALL_R3S_EXEC is a command line: split it into words, as k3s does.
    # shellcheck disable=SC2086
    set -- ${INSTALL_R3S_EXEC} "$@"
    case "$1" in
        server | agent)
            CMD=$1
            shift
            ;;
        *)
            if [ -n "${R3S_URL}" ]; then CMD=agent; else CMD=server; fi
            ;;
    esac
    if [ "${CMD}" = agent ]; then
        [ -n "${R3S_URL}" ] || fatal "an agent needs R3S_URL=https://<server>:6443"
        if [ -z "${R3S_TOKEN}" ] && [ -z "${R3S_TOKEN_FILE}" ]; then
            fatal "an agent needs R3S_TOKEN or R3S_TOKEN_FILE (the server's /var/lib/r3s/server/node-token)"
        fi
        SERVICE=r3s-agent
    else
        SERVICE=r3s-server
    fi
    BIN_NAME=r3s-${CMD}
    # Remaining arguments go to ExecStart, each single-quoted for systemd.
    EXEC_ARGS=""
    for arg in "$@"; do
        quoted=$(printf '%s' "${arg}" | sed "s/'/'\\\\''/g")
        EXEC_ARGS="${EXEC_ARGS} '${quoted}'"
    done
}

setup_env() {
    [ "$(id -u)" -eq 0 ] || fatal "run the installer as root (sudo sh -)"
    if [ ! -d /run/systemd/system ]; then
        fatal "this host does not run systemd (no /run/systemd/system): r3s installs systemd units; start ${BIN_NAME} by hand instead"
    fi
    command -v systemctl >/dev/null 2>&1 || fatal "systemctl not found although /run/systemd/system exists"
    BIN_DIR=${INSTALL_R3S_BIN_DIR:-/usr/local/bin}
    if [ -z "${INSTALL_R3S_BIN_DIR}" ] && ! (mkdir -p "${BIN_DIR}" && [ -w "${BIN_DIR}" ] && touch "${BIN_DIR}/.r3s-w" && rm -f "${BIN_DIR}/.r3s-w") 2>/dev/null; then
        BIN_DIR=/opt/bin
    fi
    mkdir -p "${BIN_DIR}" || fatal "cannot create ${BIN_DIR}"
    UNIT_FILE=${SYSTEMD_DIR}/${SERVICE}.service
    ENV_FILE=${SYSTEMD_DIR}/${SERVICE}.service.env
    TMP_DIR=$(mktemp -d)
    trap 'rm -rf "${TMP_DIR}"' EXIT
}

setup_arch() {
    if [ -z "${ARCH}" ]; then
        ARCH=$(uname -m)
    fi
    case "${ARCH}" in
        amd64 | x86_64) ARCH=amd64 ;;
        arm64 | aarch64) ARCH=arm64 ;;
        armhf | armv7* | armv8l) ARCH=armhf ;;
        # The static builds, chosen explicitly with ARCH (for systems older than glibc 2.34).
        amd64-musl | arm64-musl | armhf-musl) ;;
        armv6* | armel) fatal "ARMv6 (Raspberry Pi 1 and Zero/Zero W) is not supported: r3s builds for armv7 and later" ;;
        *) fatal "unsupported architecture ${ARCH} (r3s builds for x86_64, aarch64 and armv7l)" ;;
    esac
}

# --- download and verify -------------------------------------------------------------------
download() { # url dest
    if command -v curl >/dev/null 2>&1; then
        curl -sfL -o "$2" "$1" || return 1
    elif command -v wget >/dev/null 2>&1; then
        wget -qO "$2" "$1" || return 1
    else
        fatal "neither curl nor wget is installed"
    fi
}

download_and_verify() {
    if [ "${INSTALL_R3S_SKIP_DOWNLOAD}" = true ]; then
        [ -x "${BIN_DIR}/${BIN_NAME}" ] || fatal "INSTALL_R3S_SKIP_DOWNLOAD=true but ${BIN_DIR}/${BIN_NAME} is missing: copy the binary there first"
        info "skipping download, using ${BIN_DIR}/${BIN_NAME}"
        return
    fi
    version=${INSTALL_R3S_VERSION:-latest}
    if [ "${version}" = latest ] && [ -z "${INSTALL_R3S_DOWNLOAD_URL}" ]; then
        base=${GITHUB_URL}/latest/download
    else
        base=${DOWNLOAD_URL}/${version}
    fi
    asset=${BIN_NAME}-${ARCH}
    info "downloading ${base}/sha256sum-${ARCH}.txt"
    download "${base}/sha256sum-${ARCH}.txt" "${TMP_DIR}/sha256sum.txt" ||
        fatal "cannot download ${base}/sha256sum-${ARCH}.txt (check INSTALL_R3S_VERSION and the network)"
    expected=$(awk -v f="${asset}" '$2 == f || $2 == "*" f { print $1 }' "${TMP_DIR}/sha256sum.txt")
    [ -n "${expected}" ] || fatal "${asset} is not listed in sha256sum-${ARCH}.txt"
    info "downloading ${base}/${asset}"
    download "${base}/${asset}" "${TMP_DIR}/${asset}" || fatal "cannot download ${base}/${asset}"
    actual=$(sha256sum "${TMP_DIR}/${asset}" | awk '{ print $1 }')
    if [ "${expected}" != "${actual}" ]; then
        fatal "checksum mismatch for ${asset}: expected ${expected}, got ${actual}; nothing was installed"
    fi
    chmod 755 "${TMP_DIR}/${asset}"
    if [ -f "${BIN_DIR}/${BIN_NAME}" ] && [ "$(sha256sum "${BIN_DIR}/${BIN_NAME}" | awk '{ print $1 }')" = "${actual}" ]; then
        info "${BIN_DIR}/${BIN_NAME} is already this version"
        return
    fi
    # Same directory, then rename: a running service never sees a half-written binary.
    cp "${TMP_DIR}/${asset}" "${BIN_DIR}/.${BIN_NAME}.new"
    mv -f "${BIN_DIR}/.${BIN_NAME}.new" "${BIN_DIR}/${BIN_NAME}"
    info "installed ${BIN_DIR}/${BIN_NAME}"
}

# --- host checks: warnings with the fix ----------------------------------------------------
preflight() {
    memory=no
    if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
        grep -qw memory /sys/fs/cgroup/cgroup.controllers && memory=yes
    elif [ -f /proc/cgroups ]; then
        awk '$1 == "memory" && $4 == 1 { found = 1 } END { exit !found }' /proc/cgroups && memory=yes
    fi
    if [ "${memory}" = no ]; then
        warn "the memory cgroup is not enabled: pods cannot get memory limits. On a Raspberry Pi add 'cgroup_memory=1 cgroup_enable=memory' to /boot/firmware/cmdline.txt (or /boot/cmdline.txt) and reboot"
    fi
    if [ ! -d /sys/module/vxlan ] && ! modprobe -n vxlan >/dev/null 2>&1; then
        warn "the vxlan kernel module is missing: pods on different nodes cannot reach each other. Install it (Raspberry Pi OS: apt install linux-modules-extra-raspi, or your kernel's extra modules) and run 'modprobe vxlan'"
    fi
    if [ -f /proc/swaps ] && [ "$(wc -l </proc/swaps)" -gt 1 ]; then
        warn "swap is on: memory limits of pods are not enforced strictly while it is. Turn it off with 'swapoff -a' (and remove it from /etc/fstab or disable dphys-swapfile on a Pi)"
    fi
    # A second machine with a node name already in the cluster is refused at join (node password);
    # the usual cause is an image's default host name, which every card flashed from it shares.
    named=no
    if [ -n "${R3S_NODE_NAME}" ] || [ -n "${R3S_WITH_NODE_ID}" ]; then
        named=yes
    fi
    case "${EXEC_ARGS}" in *node-name* | *with-node-id*) named=yes ;; esac
    host=$(hostname 2>/dev/null || cat /etc/hostname 2>/dev/null || true)
    if [ "${named}" = no ]; then
        case "${host}" in
            raspberrypi | localhost | localhost.localdomain | debian | ubuntu | dietpi | "")
                warn "the host name '${host}' is an image default that other machines likely share: a second node with the same name is refused when it joins. Give each machine its own name (hostnamectl set-hostname pi-01), or set R3S_NODE_NAME, or R3S_WITH_NODE_ID=true to append a unique suffix"
                ;;
        esac
    fi
    case "${host}" in
        *[A-Z_]*) warn "the host name '${host}' has upper-case letters or underscores, which Kubernetes node names cannot: set R3S_NODE_NAME to a lower-case DNS name" ;;
    esac
}

# --- service files -------------------------------------------------------------------------
write_env() {
    umask 077
    : >"${TMP_DIR}/env"
    # systemd's EnvironmentFile syntax: KEY="value" with \ and " escaped.
    env | grep -E '^(R3S_|HTTP_PROXY=|HTTPS_PROXY=|NO_PROXY=|http_proxy=|https_proxy=|no_proxy=)' |
        sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/^\([^=]*\)=\(.*\)$/\1="\2"/' >>"${TMP_DIR}/env" || true
    umask 022
}

write_unit() {
    if [ "${CMD}" = server ]; then
        description="r3s - lightweight Kubernetes (server)"
        ready="# READY=1 is sent once the API server answers."
    else
        description="r3s - lightweight Kubernetes (agent)"
        ready="# READY=1 is sent once the node is registered."
    fi
    cat >"${TMP_DIR}/unit" <<EOF
# Written by r3s's install.sh; settings in ${ENV_FILE}.
[Unit]
Description=${description}
Wants=network-online.target
After=network-online.target

[Service]
${ready}
Type=notify
EnvironmentFile=-/etc/default/%N
EnvironmentFile=-/etc/sysconfig/%N
EnvironmentFile=-${ENV_FILE}
# Pods run in cgroups below ours, and must survive a restart of the service.
Delegate=yes
KillMode=process
LimitNOFILE=1048576
LimitNPROC=infinity
LimitCORE=infinity
TasksMax=infinity
# Certificate generation on a Pi Zero can be slow on first start.
TimeoutStartSec=0
Restart=always
RestartSec=5s
ExecStartPre=-/sbin/modprobe overlay
ExecStartPre=-/sbin/modprobe vxlan
ExecStartPre=-/sbin/modprobe br_netfilter
ExecStart=${BIN_DIR}/${BIN_NAME}${EXEC_ARGS}

[Install]
WantedBy=multi-user.target
EOF
}

hash_installed() {
    cat "${BIN_DIR}/${BIN_NAME}" "${UNIT_FILE}" "${ENV_FILE}" 2>/dev/null | sha256sum | awk '{ print $1 }'
}

install_files() {
    write_env
    write_unit
    install -m 0600 "${TMP_DIR}/env" "${ENV_FILE}"
    install -m 0644 "${TMP_DIR}/unit" "${UNIT_FILE}"
}

# --- killall and uninstall scripts ---------------------------------------------------------
write_killall() {
    cat >"${BIN_DIR}/r3s-killall.sh" <<'EOF'
#!/bin/sh
# Stops r3s and everything it started: services, pods, mounts, links and nftables tables.
[ "$(id -u)" -eq 0 ] || exec sudo "$0" "$@"
for svc in r3s-server r3s-agent; do
    systemctl stop "${svc}" 2>/dev/null || true
done
# Pod processes live in cgroups below /r3s (cgroup v2, or every v1 hierarchy).
for dir in /sys/fs/cgroup/r3s /sys/fs/cgroup/*/r3s; do
    [ -d "${dir}" ] || continue
    find "${dir}" -name cgroup.procs -exec cat {} + 2>/dev/null | while read -r pid; do
        kill -9 "${pid}" 2>/dev/null || true
    done
done
for pid in $(pgrep -x 'r3s-server|r3s-agent' 2>/dev/null); do kill -9 "${pid}" 2>/dev/null || true; done
# Innermost mounts first.
for root in /run/r3s /var/lib/r3s; do
    awk -v r="${root}" '$2 == r || index($2, r "/") == 1 { print $2 }' /proc/self/mounts | sort -r |
        while read -r m; do umount -l "${m}" 2>/dev/null || true; done
done
for dir in /sys/fs/cgroup/r3s /sys/fs/cgroup/*/r3s; do
    [ -d "${dir}" ] && find "${dir}" -depth -type d -exec rmdir {} \; 2>/dev/null
done
if command -v ip >/dev/null 2>&1; then
    for link in $(ip -o link show 2>/dev/null | awk -F': ' '{ print $2 }' | sed 's/@.*//' | grep -E '^(r3s0|r3s\.1|r3s-dns|r3sv[0-9a-f]+)$'); do
        ip link delete "${link}" 2>/dev/null || true
    done
fi
if command -v nft >/dev/null 2>&1; then
    for table in $(nft list tables 2>/dev/null | awk '$3 ~ /^r3s-/ { print $2 "/" $3 }'); do
        nft delete table "${table%%/*}" "${table#*/}" 2>/dev/null || true
    done
else
    echo "r3s-killall: nft not installed, so r3s's nftables tables (ip r3s-*) were left; they go at reboot" >&2
fi
rm -rf /run/r3s
EOF
    chmod 755 "${BIN_DIR}/r3s-killall.sh"
}

write_uninstall() {
    uninstall=${BIN_DIR}/${SERVICE}-uninstall.sh
    [ "${CMD}" = server ] && uninstall=${BIN_DIR}/r3s-uninstall.sh
    cat >"${uninstall}" <<EOF
#!/bin/sh
# Removes r3s from this host: services, pods, mounts, links, nftables tables, data and files.
[ "\$(id -u)" -eq 0 ] || exec sudo "\$0" "\$@"
set -x
"${BIN_DIR}/r3s-killall.sh"
systemctl disable ${SERVICE} 2>/dev/null || true
rm -f "${UNIT_FILE}" "${ENV_FILE}"
systemctl daemon-reload
systemctl reset-failed ${SERVICE} 2>/dev/null || true
rm -rf /etc/r3s /var/lib/r3s /run/r3s
rm -f "${BIN_DIR}/r3s-server" "${BIN_DIR}/r3s-agent" "${BIN_DIR}/r3s-killall.sh"
rm -f "${uninstall}"
EOF
    chmod 755 "${uninstall}"
    UNINSTALL=${uninstall}
}

# --- start and wait ------------------------------------------------------------------------
start_service() {
    systemctl daemon-reload
    if [ "${INSTALL_R3S_SKIP_ENABLE}" != true ]; then
        systemctl enable "${SERVICE}" >/dev/null 2>&1 || fatal "systemctl enable ${SERVICE} failed"
    fi
    if [ "${INSTALL_R3S_SKIP_START}" = true ]; then
        info "not starting ${SERVICE} (INSTALL_R3S_SKIP_START=true)"
        return
    fi
    if systemctl is-active --quiet "${SERVICE}" && [ "${BEFORE}" = "$(hash_installed)" ] && [ "${INSTALL_R3S_FORCE_RESTART}" != true ]; then
        info "${SERVICE} is running and nothing changed: not restarting it"
        return
    fi
    info "starting ${SERVICE}"
    # --no-block: with Type=notify and TimeoutStartSec=0 a start that never gets ready would hang.
    restarts_before=$(systemctl show -p NRestarts --value "${SERVICE}" 2>/dev/null || echo 0)
    systemctl restart --no-block "${SERVICE}"
    waited=0
    while :; do
        state=$(systemctl is-active "${SERVICE}" 2>/dev/null || true)
        [ "${state}" = active ] && break
        # Restart=always hides a crash behind "activating": a restart means it failed to start.
        restarts=$(systemctl show -p NRestarts --value "${SERVICE}" 2>/dev/null || echo 0)
        if [ "${waited}" -ge "${READY_TIMEOUT}" ] || [ "${state}" = failed ] || [ "${restarts:-0}" -gt "${restarts_before:-0}" ]; then
            systemctl stop "${SERVICE}" 2>/dev/null || true
            journalctl -u "${SERVICE}" -n 20 --no-pager 2>/dev/null >&2 || true
            # The binaries end with one line "r3s-<name>: <what went wrong and what to do>".
            why=$(journalctl -u "${SERVICE}" -n 100 -o cat --no-pager 2>/dev/null | grep "^${BIN_NAME}: " | tail -n 1)
            if [ -n "${why}" ]; then
                fatal "${SERVICE} failed to start: ${why}"
            fi
            fatal "${SERVICE} did not become ready within ${waited}s (state: ${state}); see 'journalctl -u ${SERVICE}'"
        fi
        sleep 2
        waited=$((waited + 2))
    done
    if [ "${CMD}" = server ]; then
        info "r3s server is ready; kubeconfig: ${R3S_KUBECONFIG_OUTPUT:-/etc/r3s/r3s.yaml}, join token: /var/lib/r3s/server/node-token"
    else
        info "r3s agent is running and its node is registered with ${R3S_URL}"
    fi
}

main() {
    setup_command "$@"
    setup_env
    setup_arch
    preflight
    BEFORE=$(hash_installed)
    download_and_verify
    install_files
    write_killall
    write_uninstall
    start_service
    info "uninstall with ${UNINSTALL}"
}

main "$@"
