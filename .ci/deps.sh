#!/usr/bin/env bash
# Installs the Debian packages that the tests and the demo need, if any is missing.
set -euo pipefail
packages=(dbus dbus-daemon dbus-bin dbus-user-session gnome-keyring libsecret-tools libnotify-bin xvfb dunst
          libsqlite3-dev pkg-config curl ca-certificates python3-venv systemd
          gjs python3-gi gir1.2-glib-2.0 lintian man-db appstream desktop-file-utils dpkg-dev
          libgtk-4-dev libadwaita-1-dev at-spi2-core python3-pyatspi imagemagick xclip
          xdg-desktop-portal flatpak)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
