#!/bin/sh
# Install schedd system-wide from this source tree (as root):
#   /opt/schedd/venv             the Python environment (Debian's python3)
#   /usr/local/bin/{schedd,schedctl,schedd-slurm}
#   /opt/schedd/slurm-bin/{sbatch,squeue,...} -> schedd-slurm, put on PATH last by
#   /etc/profile.d/schedd-slurm.sh (a real Slurm, even one installed later, always wins)
#   /etc/systemd/system/{schedd.service,schedd.slice}, /usr/lib/systemd/user/schedd.service
#   /usr/share/dbus-1/system.d/org.schedd.Schedd1.conf (+ activation files)
#   /usr/share/polkit-1/actions/org.schedd.Schedd1.policy
#   /etc/schedd/schedd.toml.example
#   /usr/local/share/schedd/{grafana/schedd-dashboard.json,prometheus/schedd-rules.yml}
#   /usr/local/share/man/man{1,5,8}/ (schedctl, schedd.toml, schedd), bash completion for schedctl
# Options: --editable (develop: the venv points at this tree), --with-tests (pytest & co),
#          --no-system-files (only the venv and the commands).
set -eu
SRC=$(cd "$(dirname "$0")/.." && pwd)
PREFIX=${SCHEDD_PREFIX:-/opt/schedd}
PY=${SCHEDD_PYTHON:-/usr/bin/python3}
editable=0 tests=0 sysfiles=1
for a in "$@"; do
  case "$a" in
    --editable) editable=1 ;;
    --with-tests) tests=1 ;;
    --no-system-files) sysfiles=0 ;;
    *) echo "install.sh: unknown option $a" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "install.sh: run as root" >&2; exit 1; }

[ -x "$PREFIX/venv/bin/python" ] || "$PY" -m venv "$PREFIX/venv"
extra=""; [ $tests = 1 ] && extra="[test]"
if [ $editable = 1 ]; then
  "$PREFIX/venv/bin/pip" install -q --disable-pip-version-check -e "$SRC$extra"
else
  "$PREFIX/venv/bin/pip" install -q --disable-pip-version-check "$SRC$extra"
fi
ln -sf "$PREFIX/venv/bin/schedd" /usr/local/bin/schedd
ln -sf "$PREFIX/venv/bin/schedctl" /usr/local/bin/schedctl
ln -sf "$PREFIX/venv/bin/schedd-slurm" /usr/local/bin/schedd-slurm
"$PREFIX/venv/bin/schedd-slurm" install-links "$PREFIX/slurm-bin"

[ $sysfiles = 1 ] || exit 0
install -D -m 0644 "$SRC/systemd/schedd.service" /etc/systemd/system/schedd.service
install -D -m 0644 "$SRC/systemd/schedd.slice" /etc/systemd/system/schedd.slice
install -D -m 0644 "$SRC/systemd/schedd-user.service" /usr/lib/systemd/user/schedd.service
install -D -m 0644 "$SRC/dbus/org.schedd.Schedd1.conf" /usr/share/dbus-1/system.d/org.schedd.Schedd1.conf
install -D -m 0644 "$SRC/dbus/org.schedd.Schedd1.service" /usr/share/dbus-1/system-services/org.schedd.Schedd1.service
install -D -m 0644 "$SRC/dbus/org.schedd.Schedd1.session.service" /usr/share/dbus-1/services/org.schedd.Schedd1.service
for x in "$SRC"/dbus/*.xml; do [ -e "$x" ] && install -D -m 0644 "$x" "/usr/share/dbus-1/interfaces/$(basename "$x")"; done
install -D -m 0644 "$SRC/packaging/org.schedd.Schedd1.policy" /usr/share/polkit-1/actions/org.schedd.Schedd1.policy
install -D -m 0644 "$SRC/packaging/schedd.toml.example" /etc/schedd/schedd.toml.example
install -D -m 0644 "$SRC/packaging/grafana/schedd-dashboard.json" /usr/local/share/schedd/grafana/schedd-dashboard.json
install -D -m 0644 "$SRC/packaging/prometheus/schedd-rules.yml" /usr/local/share/schedd/prometheus/schedd-rules.yml
# Slurm's command names on login shells' PATH, after everything else: never in front of a real sbatch.
cat > /etc/profile.d/schedd-slurm.sh <<EOF_PROFILE
# Installed by schedd's packaging/install.sh: Slurm's commands answered by schedd, last on PATH.
case ":\$PATH:" in *":$PREFIX/slurm-bin:"*) ;; *) PATH="\${PATH:+\$PATH:}$PREFIX/slurm-bin" ;; esac
EOF_PROFILE
# The manuals, generated from the code as the package does, and bash completion.
man=$(mktemp -d)
if "$PREFIX/venv/bin/python" "$SRC/packaging/manpages.py" "$man" >/dev/null; then
  for p in "$man"/*; do
    s=${p##*.}
    install -D -m 0644 "$p" "/usr/local/share/man/man$s/$(basename "$p")"
  done
fi
rm -rf "$man"
install -D -m 0644 "$SRC/packaging/completion/schedctl.bash" /usr/local/share/bash-completion/completions/schedctl
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  busctl call org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus ReloadConfig >/dev/null 2>&1 || true
fi
echo "schedd installed: systemctl enable --now schedd; then: schedctl submit -- echo hello"
