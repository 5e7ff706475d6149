#!/bin/sh
# End-to-end test of install.sh on real systemd: a Debian bookworm rootfs (debootstrap, cached in
# /var/cache/r3s-test) booted with systemd-nspawn in a network namespace this test makes, reached
# with nsenter. install.sh and the release files are served by a local HTTP server on 127.0.0.1
# inside that namespace. Covers: install + unit active + kubectl sees a Ready node, a tampered
# binary refused by its checksum (nothing changed), an upgrade restarts the service while a
# re-run of the same version does not; a second container joins as an agent with the server's
# token, after a wrong token and a token with a foreign CA hash were refused; both uninstalls
# leave no unit, binary, data, link or nftables table. Everything made here is removed on exit,
# on failure too.
#
# Usage: tests/install/e2e.sh   (as root; CI=true turns a missing prerequisite into a failure)
set -eu

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
TARGET=${CARGO_TARGET_DIR:-${ROOT}/target}
CACHE=/var/cache/r3s-test
ROOTFS=${CACHE}/bookworm-r3s-1
PREFIX=r3si$$
NS=${PREFIX}s
NS2=${PREFIX}a
PORT=18080
WORK=$(mktemp -d /tmp/${PREFIX}.XXXXXX)
NSPAWN_PID=""
NSPAWN2_PID=""
HTTP_PID=""
HTTP2_PID=""

log() { echo "install-e2e: $*"; }
fail() {
    echo "install-e2e: FAIL: $*" >&2
    if [ -n "${inner:-}" ]; then
        for f in "${WORK}"/install-*.log; do
            [ -f "${f}" ] && { echo "--- ${f}" >&2; tail -20 "${f}" >&2; }
        done
        echo "--- journal of r3s-server" >&2
        nsenter -t "${inner}" -a journalctl -u r3s-server -n 40 --no-pager >&2 || true
    fi
    exit 1
}

stop_container() { # nspawn pid
    [ -n "$1" ] && kill -0 "$1" 2>/dev/null || return 0
    # SIGTERM asks nspawn to shut the container's systemd down cleanly.
    kill -TERM "$1"
    j=0
    while kill -0 "$1" 2>/dev/null && [ $j -lt 60 ]; do
        sleep 0.5
        j=$((j + 1))
    done
    kill -KILL "$1" 2>/dev/null
}

cleanup() {
    set +e
    stop_container "${NSPAWN2_PID}"
    stop_container "${NSPAWN_PID}"
    [ -n "${HTTP_PID}" ] && kill "${HTTP_PID}" 2>/dev/null
    [ -n "${HTTP2_PID}" ] && kill "${HTTP2_PID}" 2>/dev/null
    ip netns del "${NS}" 2>/dev/null
    ip netns del "${NS2}" 2>/dev/null
    rm -rf "${WORK}"
}
trap cleanup EXIT INT TERM

missing() {
    if [ "${CI:-}" = true ]; then fail "missing prerequisite: $*"; fi
    echo "install-e2e: skipped: $*"
    exit 0
}

[ "$(id -u)" -eq 0 ] || missing "must run as root"
for tool in debootstrap systemd-nspawn nsenter python3 kubectl sha256sum nft ip; do
    command -v "${tool}" >/dev/null 2>&1 || missing "${tool} (apt-get install debootstrap systemd-container python3 nftables iproute2)"
done

# --- binaries and a local release ----------------------------------------------------------
(cd "${ROOT}" && cargo build --locked --quiet --bin r3s-server --bin r3s-agent)
case "$(uname -m)" in
    x86_64) ARCH=amd64 ;;
    aarch64) ARCH=arm64 ;;
    *) ARCH=armhf ;;
esac
release() { # version [tamper]
    d=${WORK}/dist/$1
    mkdir -p "${d}"
    cp "${TARGET}/debug/r3s-server" "${d}/r3s-server-${ARCH}"
    cp "${TARGET}/debug/r3s-agent" "${d}/r3s-agent-${ARCH}"
    # A distinct but runnable binary per version: bytes after the ELF image are ignored.
    printf '%s' "$1" >>"${d}/r3s-server-${ARCH}"
    (cd "${d}" && sha256sum "r3s-server-${ARCH}" "r3s-agent-${ARCH}" >"sha256sum-${ARCH}.txt")
    if [ "${2:-}" = tamper ]; then
        printf 'x' >>"${d}/r3s-server-${ARCH}"
    fi
}
release v1
release v2
release vbad tamper
cp "${ROOT}/install.sh" "${WORK}/dist/install.sh"

# --- rootfs (cached), namespace, HTTP server, container ------------------------------------
if [ ! -x "${ROOTFS}/lib/systemd/systemd" ]; then
    log "building the bookworm rootfs (cached in ${ROOTFS})"
    mkdir -p "${CACHE}"
    rm -rf "${ROOTFS}.tmp"
    debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,iproute2,curl,ca-certificates,nftables \
        bookworm "${ROOTFS}.tmp" http://deb.debian.org/debian >"${WORK}/debootstrap.log" 2>&1 ||
        { tail -20 "${WORK}/debootstrap.log" >&2; fail "debootstrap failed"; }
    mv "${ROOTFS}.tmp" "${ROOTFS}"
fi
# debootstrap copies this machine's /etc/hostname; without it each container keeps the host name
# nspawn gives it, so the two nodes get distinct names.
rm -f "${ROOTFS}/etc/hostname"

# Two simulated hosts, a server (203.0.113.10) and an agent (203.0.113.11), linked by a veth
# pair; r3s (like k3s) needs an address and a default route for its node IP. Each host serves the
# release on its own 127.0.0.1.
ip netns add "${NS}"
ip netns add "${NS2}"
ip -n "${NS}" link add eth0 type veth peer name eth0 netns "${NS2}"
for n in "${NS}:10" "${NS2}:11"; do
    ns=${n%%:*}
    ip -n "${ns}" link set lo up
    ip -n "${ns}" addr add "203.0.113.${n#*:}/24" dev eth0
    ip -n "${ns}" link set eth0 up
    ip -n "${ns}" route add default via 203.0.113.1 dev eth0
done
ip netns exec "${NS}" python3 -m http.server --bind 127.0.0.1 --directory "${WORK}/dist" "${PORT}" \
    >"${WORK}/http.log" 2>&1 &
HTTP_PID=$!
ip netns exec "${NS2}" python3 -m http.server --bind 127.0.0.1 --directory "${WORK}/dist" "${PORT}" \
    >"${WORK}/http2.log" 2>&1 &
HTTP2_PID=$!

boot() { # netns hostname console-log; prints the nspawn pid
    # --volatile=overlay: the cached rootfs stays pristine, every write goes to a tmpfs.
    # --capability=all: the agent creates bridges and mounts, as it does on a real host.
    systemd-nspawn -D "${ROOTFS}" --volatile=overlay --boot --register=no --keep-unit --capability=all \
        --network-namespace-path="/run/netns/$1" -M "$2" --hostname="$2" >"$3" 2>&1 &
    echo $!
}
wait_booted() { # nspawn pid console-log; prints the container's systemd pid
    k=0
    while [ $k -lt 120 ]; do
        p=$(pgrep -P "$1" -x systemd || true)
        if [ -n "${p}" ]; then
            st=$(nsenter -t "${p}" -a systemctl is-system-running 2>/dev/null || true)
            case "${st}" in running | degraded)
                echo "${p}"
                return 0
                ;;
            esac
        fi
        sleep 0.5
        k=$((k + 1))
    done
    tail -20 "$2" >&2
    return 1
}
NSPAWN_PID=$(boot "${NS}" "${PREFIX}-server" "${WORK}/console.log")
inner=$(wait_booted "${NSPAWN_PID}" "${WORK}/console.log") || fail "the server container did not boot"
log "server container booted (systemd pid ${inner})"

in_ct() { nsenter -t "${inner}" -a "$@"; }
install_r3s() { # version [extra env...]
    v=$1
    shift
    in_ct env "$@" INSTALL_R3S_DOWNLOAD_URL="http://127.0.0.1:${PORT}" INSTALL_R3S_VERSION="${v}" \
        INSTALL_R3S_READY_TIMEOUT=180 \
        sh -c "curl -sfL http://127.0.0.1:${PORT}/install.sh | sh -"
}
ct_kubectl() { ip netns exec "${NS}" kubectl --kubeconfig "/proc/${inner}/root/etc/r3s/r3s.yaml" "$@"; }
main_pid() { in_ct systemctl show -p MainPID --value r3s-server; }

# --- install -------------------------------------------------------------------------------
log "installing v1"
install_r3s v1 >"${WORK}/install-v1.log" 2>&1 || { cat "${WORK}/install-v1.log" >&2; fail "install.sh v1 failed"; }
[ "$(in_ct systemctl is-active r3s-server)" = active ] || fail "r3s-server is not active after install"
[ "$(in_ct systemctl is-enabled r3s-server)" = enabled ] || fail "r3s-server is not enabled"
env_mode=$(in_ct stat -c %a /etc/systemd/system/r3s-server.service.env)
[ "${env_mode}" = 600 ] || fail "env file mode is ${env_mode}, want 600"
# The unit install.sh writes is systemd/r3s-server.service, bar the comment and paths.
norm() { grep -v -e '^#' -e '^ExecStart=' -e '^EnvironmentFile=-/etc/systemd'; }
in_ct cat /etc/systemd/system/r3s-server.service | norm >"${WORK}/unit.installed"
norm <"${ROOT}/systemd/r3s-server.service" >"${WORK}/unit.repo"
diff -u "${WORK}/unit.repo" "${WORK}/unit.installed" || fail "installed unit differs from systemd/r3s-server.service"

ready=""
i=0
while [ $i -lt 90 ]; do
    ready=$(ct_kubectl get nodes -o jsonpath='{.items[*].status.conditions[?(@.type=="Ready")].status}' 2>/dev/null || true)
    [ "${ready}" = True ] && break
    sleep 2
    i=$((i + 1))
done
[ "${ready}" = True ] || { ct_kubectl get nodes -o wide >&2 || true; in_ct journalctl -u r3s-server -n 40 --no-pager >&2; fail "no Ready node"; }
log "kubectl sees a Ready node"

# --- a tampered binary is refused and changes nothing ---------------------------------------
before=$(in_ct sha256sum /usr/local/bin/r3s-server)
pid_before=$(main_pid)
if install_r3s vbad >"${WORK}/install-bad.log" 2>&1; then fail "install.sh accepted a tampered binary"; fi
grep -q "checksum mismatch" "${WORK}/install-bad.log" || { cat "${WORK}/install-bad.log" >&2; fail "no checksum message"; }
[ "$(in_ct sha256sum /usr/local/bin/r3s-server)" = "${before}" ] || fail "the tampered install changed the binary"
[ "$(main_pid)" = "${pid_before}" ] || fail "the tampered install restarted the service"
log "tampered binary refused"

# --- same version: no restart; new version: upgrade and restart -----------------------------
install_r3s v1 >"${WORK}/install-v1b.log" 2>&1 || { cat "${WORK}/install-v1b.log" >&2; fail "re-running v1 failed"; }
[ "$(main_pid)" = "${pid_before}" ] || fail "re-running the same version restarted the service"
install_r3s v2 >"${WORK}/install-v2.log" 2>&1 || { cat "${WORK}/install-v2.log" >&2; fail "upgrade to v2 failed"; }
[ "$(main_pid)" != "${pid_before}" ] || fail "the upgrade did not restart the service"
want=$(awk -v f="r3s-server-${ARCH}" '$2 == f { print $1 }' "${WORK}/dist/v2/sha256sum-${ARCH}.txt")
[ "$(in_ct sha256sum /usr/local/bin/r3s-server | awk '{ print $1 }')" = "${want}" ] || fail "the upgrade did not install v2"
log "upgrade restarts only when something changed"

# --- systemd-analyze verify: the repository's units, on this real systemd ----------------------
mkdir -p "/proc/${inner}/root/tmp/units"
cp "${ROOT}"/systemd/*.service "/proc/${inner}/root/tmp/units/"
cp "${TARGET}/debug/r3s-agent" "/proc/${inner}/root/usr/local/bin/r3s-agent"
in_ct systemd-analyze verify /tmp/units/r3s-server.service /tmp/units/r3s-agent.service \
    /etc/systemd/system/r3s-server.service >"${WORK}/verify.log" 2>&1 ||
    { cat "${WORK}/verify.log" >&2; fail "systemd-analyze verify found problems"; }
[ ! -s "${WORK}/verify.log" ] || { cat "${WORK}/verify.log" >&2; fail "systemd-analyze verify printed warnings"; }
log "systemd-analyze verify clean"

# --- an agent joins; wrong tokens are refused -----------------------------------------------
NSPAWN2_PID=$(boot "${NS2}" "${PREFIX}-agent" "${WORK}/console2.log")
inner2=$(wait_booted "${NSPAWN2_PID}" "${WORK}/console2.log") || fail "the agent container did not boot"
log "agent container booted (systemd pid ${inner2})"
in_ct2() { nsenter -t "${inner2}" -a "$@"; }
install_agent() { # token
    in_ct2 env R3S_URL=https://203.0.113.10:6443 R3S_TOKEN="$1" INSTALL_R3S_DOWNLOAD_URL="http://127.0.0.1:${PORT}" \
        INSTALL_R3S_VERSION=v1 INSTALL_R3S_READY_TIMEOUT=180 \
        sh -c "curl -sfL http://127.0.0.1:${PORT}/install.sh | sh -"
}
token=$(cat "/proc/${inner}/root/var/lib/r3s/server/node-token")
case "${token}" in K10*::server:*) ;; *) fail "node-token is not in K10<hash>::server:<secret> form" ;; esac
ca_hash=${token%%::*}
secret=${token#*::server:}

if install_agent "${ca_hash}::server:not-the-secret" >"${WORK}/install-agent-badtoken.log" 2>&1; then
    fail "an agent with a wrong token was installed and started"
fi
grep -q "r3s-agent failed to start: r3s-agent: .*401" "${WORK}/install-agent-badtoken.log" ||
    { cat "${WORK}/install-agent-badtoken.log" >&2; fail "a wrong token did not give the one-line 401 reason"; }
if install_agent "K10$(printf '%064d' 0)::server:${secret}" >"${WORK}/install-agent-badca.log" 2>&1; then
    fail "an agent with a foreign CA hash was installed and started"
fi
grep -q "r3s-agent failed to start: r3s-agent: .*CA certificate" "${WORK}/install-agent-badca.log" ||
    { cat "${WORK}/install-agent-badca.log" >&2; fail "a foreign CA hash did not give a one-line CA reason"; }
log "wrong token and foreign CA hash refused"

install_agent "${token}" >"${WORK}/install-agent.log" 2>&1 ||
    { cat "${WORK}/install-agent.log" >&2; in_ct2 journalctl -u r3s-agent -n 40 --no-pager >&2; fail "the agent install failed"; }
[ "$(in_ct2 systemctl is-active r3s-agent)" = active ] || fail "r3s-agent is not active after install"
ready=""
i=0
while [ $i -lt 90 ]; do
    ready=$(ct_kubectl get node "${PREFIX}-agent" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null || true)
    [ "${ready}" = True ] && break
    sleep 2
    i=$((i + 1))
done
[ "${ready}" = True ] || { ct_kubectl get nodes -o wide >&2 || true; in_ct2 journalctl -u r3s-agent -n 40 --no-pager >&2; fail "the agent's node is not Ready"; }
log "the agent joined and its node is Ready"

in_ct2 /usr/local/bin/r3s-agent-uninstall.sh >"${WORK}/uninstall-agent.log" 2>&1 ||
    { cat "${WORK}/uninstall-agent.log" >&2; fail "agent uninstall failed"; }
for f in /etc/systemd/system/r3s-agent.service /etc/systemd/system/r3s-agent.service.env \
    /usr/local/bin/r3s-agent /usr/local/bin/r3s-killall.sh /usr/local/bin/r3s-agent-uninstall.sh \
    /var/lib/r3s /etc/r3s /run/r3s; do
    if in_ct2 test -e "${f}"; then fail "agent uninstall left ${f}"; fi
done
links=$(ip -n "${NS2}" -o link show | awk -F': ' '{ print $2 }' | grep '^r3s' || true)
[ -z "${links}" ] || fail "agent uninstall left links: ${links}"
tables=$(ip netns exec "${NS2}" nft list tables | grep r3s || true)
[ -z "${tables}" ] || fail "agent uninstall left nftables tables: ${tables}"
log "agent uninstall left no trace"

# --- uninstall leaves nothing ----------------------------------------------------------------
in_ct /usr/local/bin/r3s-uninstall.sh >"${WORK}/uninstall.log" 2>&1 || { cat "${WORK}/uninstall.log" >&2; fail "uninstall failed"; }
for f in /etc/systemd/system/r3s-server.service /etc/systemd/system/r3s-server.service.env \
    /usr/local/bin/r3s-server /usr/local/bin/r3s-killall.sh /usr/local/bin/r3s-uninstall.sh \
    /var/lib/r3s /etc/r3s /run/r3s; do
    if in_ct test -e "${f}"; then fail "uninstall left ${f}"; fi
done
links=$(ip -n "${NS}" -o link show | awk -F': ' '{ print $2 }' | grep '^r3s' || true)
[ -z "${links}" ] || fail "uninstall left links: ${links}"
tables=$(ip netns exec "${NS}" nft list tables | grep r3s || true)
[ -z "${tables}" ] || fail "uninstall left nftables tables: ${tables}"
mounts=$(grep -c -e ' /var/lib/r3s' -e ' /run/r3s' "/proc/${inner}/mounts" || true)
[ "${mounts}" = 0 ] || fail "uninstall left ${mounts} mounts"
if in_ct systemctl cat r3s-server >/dev/null 2>&1; then fail "systemd still knows r3s-server"; fi
log "uninstall left no trace"
log "PASS"
