#!/usr/bin/env bash
# The Debian package on this machine, as root (CI is): install it with dpkg, check what it
# installed (D-Bus activation of the installed service on a private bus, the systemd user unit, the
# man pages, completions, desktop and metainfo files), then remove and purge it and check that
# nothing is left. `make test-package` builds the package from the debug build and runs this.
#
#   packaging/test-package.sh target/debian-test/matrix-linkd_*.deb
set -uo pipefail
deb=${1:?usage: test-package.sh PACKAGE.deb}
[ "$(id -u)" -eq 0 ] || { echo "test-package: dpkg -i needs root" >&2; exit 1; }
pkg=$(dpkg-deb -f "$deb" Package)
work=$(mktemp -d /tmp/linkd-package-XXXXXX)
passed=0 failed=0
bus_pid= service_pid=

cleanup() {
  [ -n "$bus_pid" ] && kill "$bus_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

# check NAME COMMAND…: runs COMMAND, its output kept in $work/out (shown on failure).
check() {
  local name=$1; shift
  if "$@" >"$work/out" 2>&1; then
    echo "ok      $name"; passed=$((passed + 1))
  else
    echo "FAILED  $name"; sed 's/^/        /' "$work/out" | tail -40; failed=$((failed + 1))
  fi
}

# A package left by an interrupted run goes first.
if dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'installed\|config-files'; then
  dpkg -P "$pkg" >/dev/null
fi

if ! dpkg -i "$deb" >"$work/out" 2>&1; then
  cat "$work/out"
  echo "test-package: dpkg -i failed (missing dependencies? bash .ci/deps.sh installs them)" >&2
  dpkg -P "$pkg" >/dev/null 2>&1
  echo "0 passed, 1 failed"
  exit 1
fi
echo "installed $(dpkg-query -W -f='${Package} ${Version}' "$pkg")"
# What the package installed: files and links (directories are shared with other packages).
dpkg -L "$pkg" | while read -r f; do [ -f "$f" ] || [ -L "$f" ] && echo "$f"; done >"$work/files"

has() { grep -qx "$1" "$work/files"; }
for f in /usr/bin/matrix-linkd /usr/bin/matrix-link /usr/bin/matrix-link-gtk \
         /usr/lib/systemd/user/matrix-linkd.service \
         /usr/share/dbus-1/services/io.github.matrix_linkd.Linkd1.service \
         /usr/share/dbus-1/interfaces/io.github.matrix_linkd.Linkd1.Manager.xml \
         /usr/share/dbus-1/interfaces/io.github.matrix_linkd.Linkd1.Flow.xml \
         /usr/share/doc/matrix-linkd/examples/config.toml /usr/share/doc/matrix-linkd/copyright \
         /usr/share/doc/matrix-linkd/README.md /usr/share/doc/matrix-linkd/docs/protocol.md \
         /usr/share/bash-completion/completions/matrix-link /usr/share/zsh/vendor-completions/_matrix-link \
         /usr/share/fish/vendor_completions.d/matrix-link.fish \
         /usr/share/applications/io.github.matrix_linkd.LinkDevice.desktop \
         /usr/share/icons/hicolor/scalable/apps/io.github.matrix_linkd.LinkDevice.svg \
         /usr/share/metainfo/io.github.matrix_linkd.LinkDevice.metainfo.xml; do
  check "installs $f" has "$f"
done

# D-Bus activation of the installed service file, on a private bus of its own whose environment
# (which activated services inherit) is a private home: nothing touches root's own home, config
# or keyring. The bus can activate our service only, so it starts no keyring that could outlive it.
check "the activation file runs /usr/bin/matrix-linkd" \
  grep -qx 'Exec=/usr/bin/matrix-linkd' /usr/share/dbus-1/services/io.github.matrix_linkd.Linkd1.service
mkdir -p "$work"/{home,runtime,bus,services} && chmod 700 "$work/runtime"
cp /usr/share/dbus-1/services/io.github.matrix_linkd.Linkd1.service "$work/services/"
cat >"$work/bus.conf" <<EOF
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:dir=$work/bus</listen>
  <auth>EXTERNAL</auth>
  <servicedir>$work/services</servicedir>
  <policy context="default"><allow send_destination="*" eavesdrop="true"/><allow eavesdrop="true"/><allow own="*"/></policy>
</busconfig>
EOF
# private_env [NAME=VALUE…] COMMAND…: COMMAND with the private home only; in_session: on the bus too.
private_env() {
  env -i PATH=/usr/bin:/bin HOME="$work/home" XDG_RUNTIME_DIR="$work/runtime" \
    XDG_CONFIG_HOME="$work/home/.config" XDG_DATA_HOME="$work/home/.local/share" "$@"
}
in_session() { private_env DBUS_SESSION_BUS_ADDRESS="$address" "$@"; }
exec {addr_fd}< <(private_env dbus-daemon --config-file="$work/bus.conf" --nofork --print-address=1 --print-pid=1 2>/dev/null)
read -r -t 10 address <&"$addr_fd"
read -r -t 10 bus_pid <&"$addr_fd"
activated() {
  local version pid exe
  version=$(in_session busctl --user --timeout=30 get-property io.github.matrix_linkd.Linkd1 \
    /io/github/matrix_linkd/Linkd1 io.github.matrix_linkd.Linkd1.Manager Version) || return 1
  echo "Version: $version"
  [[ $version =~ ^u\ [1-9][0-9]*$ ]] || return 1
  pid=$(in_session busctl --user call org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus \
    GetConnectionUnixProcessID s io.github.matrix_linkd.Linkd1 | cut -d' ' -f2) || return 1
  exe=$(readlink "/proc/$pid/exe")
  echo "the service is pid $pid, $exe"
  service_pid=$pid
  [ "$exe" = /usr/bin/matrix-linkd ]
}
check "D-Bus activation starts /usr/bin/matrix-linkd; Manager.Version" activated
private_home() {
  local home
  home=$(tr '\0' '\n' <"/proc/$service_pid/environ" | sed -n 's/^HOME=//p')
  echo "the service's HOME is $home"
  [ "$home" = "$work/home" ] && [ -e "$work/home/.local/share/matrix-linkd/lock" ]
}
[ -n "$service_pid" ] && check "the activated service lives in the bus's private home, not root's" private_home
# The service stops on SIGTERM, then the bus goes; nothing the bus started may outlive it.
stopped() {
  kill -TERM "$service_pid" 2>/dev/null
  for _ in $(seq 100); do kill -0 "$service_pid" 2>/dev/null || break; sleep 0.1; done
  ! kill -0 "$service_pid" 2>/dev/null || { echo "pid $service_pid still runs"; return 1; }
  kill "$bus_pid" 2>/dev/null; bus_pid=
  local left
  left=$(grep -lsF "DBUS_STARTER_ADDRESS=unix:path=$work/bus" /proc/[0-9]*/environ)
  [ -z "$left" ] || { echo "left running: $left"; return 1; }
}
[ -n "$service_pid" ] && check "the service stops on SIGTERM; nothing the bus started is left" stopped
kill "$bus_pid" 2>/dev/null; bus_pid=

# The user unit, in user mode (no user manager needed, only XDG_RUNTIME_DIR): it must load with
# neither an error nor a warning.
verify_unit() {
  env XDG_RUNTIME_DIR="$work/runtime" systemd-analyze --user verify --man=no \
    /usr/lib/systemd/user/matrix-linkd.service >"$work/verify.txt" 2>&1 || { cat "$work/verify.txt"; return 1; }
  [ ! -s "$work/verify.txt" ] || { cat "$work/verify.txt"; return 1; }
}
check "systemd-analyze --user verify matrix-linkd.service" verify_unit
check "the unit starts /usr/bin/matrix-linkd" grep -qx 'ExecStart=/usr/bin/matrix-linkd' /usr/lib/systemd/user/matrix-linkd.service

man_page() {
  local name
  name=$(basename "$1"); name=${name%.gz}; name=${name%.[18]}
  MANWIDTH=80 man -l "$1" >"$work/man.txt" 2>"$work/man.err" || { cat "$work/man.err"; return 1; }
  [ ! -s "$work/man.err" ] || { cat "$work/man.err"; return 1; }
  # NAME, then the page's name and its one-line description.
  grep -A1 '^NAME' "$work/man.txt" | grep -Eq "^ *$name +- " || { head -20 "$work/man.txt"; return 1; }
}
pages=$(grep '^/usr/share/man/' "$work/files")
check "man pages: matrix-linkd(8), matrix-link(1), matrix-link-gtk(1)" bash -c \
  'for p in matrix-linkd.8 matrix-link.1 matrix-link-gtk.1; do grep -q "/$p\(.gz\)\?$" <<<"$1" || { echo "no $p"; exit 1; }; done' _ "$pages"
for p in $pages; do check "man -l $p" man_page "$p"; done
check "bash completion of matrix-link" bash -c \
  'source /usr/share/bash-completion/completions/matrix-link && complete -p matrix-link'

check "desktop-file-validate" desktop-file-validate /usr/share/applications/io.github.matrix_linkd.LinkDevice.desktop
check "appstreamcli validate --no-net" \
  appstreamcli validate --no-net /usr/share/metainfo/io.github.matrix_linkd.LinkDevice.metainfo.xml
check "matrix-link --version" /usr/bin/matrix-link --version
check "matrix-linkd --check-config of the example config" \
  env HOME="$work/home" /usr/bin/matrix-linkd --check-config --config /usr/share/doc/matrix-linkd/examples/config.toml

# Remove, then purge: nothing of the package is left.
check "dpkg -r" dpkg -r "$pkg"
left() { local f n=0; while read -r f; do if [ -e "$f" ] || [ -L "$f" ]; then echo "left: $f"; n=1; fi; done <"$work/files"; return $n; }
check "dpkg -r removes every installed file ($(wc -l <"$work/files") files)" left
check "dpkg -P" dpkg -P "$pkg"
gone() {
  local status
  status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)
  case $status in ""|*not-installed) ;; *) echo "dpkg still knows $pkg: $status"; return 1 ;; esac
  [ ! -e /usr/share/doc/matrix-linkd ] || { echo "/usr/share/doc/matrix-linkd is left"; return 1; }
}
check "dpkg -P leaves no trace of the package" gone

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
