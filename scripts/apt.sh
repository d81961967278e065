# Sourced by scripts/test and scripts/bench: install Debian packages a script needs.
# `need COMMAND PACKAGE` installs PACKAGE when COMMAND (a command or a file) is absent and
# this runs as root; otherwise it appends PACKAGE to the array `missing`, which the caller
# reports as it sees fit (scripts/test stops, scripts/bench goes on).

is_root() { [ "$(id -u)" -eq 0 ]; }

apt_updated=0
apt_install() {
    if [ "$apt_updated" -eq 0 ]; then
        apt-get update
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y "$@"
}

missing=()
need() {
    if ! command -v "$1" >/dev/null 2>&1 && [ ! -e "$1" ]; then
        if is_root; then apt_install "$2"; else missing+=("$2"); fi
    fi
}
