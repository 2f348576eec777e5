#!/usr/bin/env bash
# MBROLA diphone voices for the multilingual speech tests (idempotent; `make setup` runs it).
# espeak-ng's own voices are formant synthesis, which Whisper base hears as another language
# (its German as English or Welsh, its French as Thai: docs/languages.md); espeak-ng in front
# of an MBROLA voice (concatenated diphones of a recorded speaker) is understood. The voices
# are in Debian's contrib/non-free components (their licence allows non-commercial use: they
# make test and bench speech here, never a reply voice, and no image carries them), which the
# machine's apt sources may not list: the packages are fetched with a sources list of our own
# (the same mirror, this release's contrib and non-free), kept under .cache/debs, and installed
# with dpkg. Needs root (CI is root) or sudo; otherwise says what to do.
set -euo pipefail
VOICES=(de2 fr4 es2)  # tidegate/bench/audio_sets.py LANGUAGE_VOICES
need=()
command -v mbrola >/dev/null 2>&1 || need+=(mbrola)
for v in "${VOICES[@]}"; do
  [ -e "/usr/share/mbrola/$v/$v" ] || need+=("mbrola-$v")
done
[ ${#need[@]} -eq 0 ] && exit 0
. "$(dirname "$0")/as-root.sh"
as_root "setup-mbrola: missing ${need[*]} (Debian contrib/non-free); install them as root"
echo "setup-mbrola: installing ${need[*]}" >&2
root="$(cd "$(dirname "$0")/.." && pwd)"
debs="$root/.cache/debs"
apt_dir="$root/.cache/apt-mbrola"
mkdir -p "$debs" "$apt_dir/lists/partial"
. /etc/os-release
codename="${VERSION_CODENAME:-bookworm}"
echo "deb http://deb.debian.org/debian $codename contrib non-free" >"$apt_dir/sources.list"
apt=(-qq -o Dir::Etc::sourcelist="$apt_dir/sources.list" -o Dir::Etc::sourceparts=-
  -o Dir::State::Lists="$apt_dir/lists" -o APT::Sandbox::User=root)
"${sudo[@]}" apt-get "${apt[@]}" update
(cd "$debs" && "${sudo[@]}" apt-get "${apt[@]}" download "${need[@]}")
files=()
for p in "${need[@]}"; do
  files+=("$(ls -t "$debs/${p}_"*.deb | head -1)")
done
"${sudo[@]}" dpkg -i "${files[@]}" >/dev/null
