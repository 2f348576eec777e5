# Sourced by the setup scripts. `as_root "what to do by hand"` sets the array `sudo`, the
# prefix that runs a command as root: empty for root (CI), `sudo -n` where that works without
# a password. Otherwise it prints the message and ends the calling script with status 0: set-up
# goes on, and the tests that need what is missing say so.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    sudo=()
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo=(sudo -n)
  else
    echo "$1" >&2
    exit 0
  fi
}
