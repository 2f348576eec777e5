#!/usr/bin/env bash
# The voices that speak the multilingual tests' and benches' sentences (idempotent; `make
# setup` runs it): SVOX Pico (pico2wave: German, Spanish, French; the voices in use,
# tidegate/bench/audio_sets.py LANGUAGE_VOICES) and MBROLA diphone voices behind espeak-ng
# (the set before Pico, kept for comparison: `tidegate bench asr --voices`). espeak-ng's own
# voices are formant synthesis, which Whisper base hears as another language; MBROLA's Spanish
# it does not understand; Pico's it does (docs/languages.md). Both are in Debian's
# contrib/non-free components (MBROLA's licence allows non-commercial use; Pico's language
# files ship without their sources): they make test and bench speech here, never a reply
# voice, and no image carries them. The machine's apt sources may not list those components:
# the packages are fetched with a sources list of our own (the same mirror, this release's
# contrib and non-free), kept under .cache/debs, and installed with dpkg. Needs root (CI is
# root) or sudo; otherwise says what to do.
set -euo pipefail
VOICES=(de2 fr4 es2)  # MBROLA: the set before Pico (docs/languages.md)
need=()
command -v mbrola >/dev/null 2>&1 || need+=(mbrola)
for v in "${VOICES[@]}"; do
  [ -e "/usr/share/mbrola/$v/$v" ] || need+=("mbrola-$v")
done
command -v pico2wave >/dev/null 2>&1 || need+=(libttspico-utils libttspico-data PICO_LIB)
[ ${#need[@]} -eq 0 ] && exit 0
. "$(dirname "$0")/as-root.sh"
as_root "setup-test-voices: missing ${need[*]/PICO_LIB/libttspico0} (Debian contrib/non-free); install them as root"
root="$(cd "$(dirname "$0")/.." && pwd)"
debs="$root/.cache/debs"
apt_dir="$root/.cache/apt-test-voices"
mkdir -p "$debs" "$apt_dir/lists/partial"
. /etc/os-release
codename="${VERSION_CODENAME:-bookworm}"
echo "deb http://deb.debian.org/debian $codename contrib non-free" >"$apt_dir/sources.list"
apt=(-qq -o Dir::Etc::sourcelist="$apt_dir/sources.list" -o Dir::Etc::sourceparts=-
  -o Dir::State::Lists="$apt_dir/lists" -o APT::Sandbox::User=root)
"${sudo[@]}" apt-get "${apt[@]}" update
# Pico's library package is libttspico0 up to bookworm, libttspico0t64 after it.
pico_lib=libttspico0t64
apt-cache "${apt[@]}" show "$pico_lib" >/dev/null 2>&1 || pico_lib=libttspico0
need=("${need[@]/PICO_LIB/$pico_lib}")
echo "setup-test-voices: installing ${need[*]}" >&2
(cd "$debs" && "${sudo[@]}" apt-get "${apt[@]}" download "${need[@]}")
files=()
for p in "${need[@]}"; do
  files+=("$(ls -t "$debs/${p}_"*.deb | head -1)")
done
"${sudo[@]}" dpkg -i "${files[@]}" >/dev/null
