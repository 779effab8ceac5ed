#!/usr/bin/env bash
# The release of heartbeat-sidecar: one binary for every x86_64 Linux with
# glibc 2.17 or newer (RHEL/CentOS 7+, Debian 8+, Ubuntu 14.04+, Amazon Linux
# 2), proved, and packed as a .deb.
#   scripts/release.sh
# 1. builds it with cargo-zigbuild against glibc 2.17 (the release profile of
#    the root Cargo.toml: fat LTO, opt-level s, stripped);
# 2. fails if `objdump -T` shows a symbol that needs a newer glibc, or if it
#    links any library but glibc's;
# 3. runs it: --version, then `run --name release-check -- true` against a
#    temp local store, the row read back with `status --json`;
# 4. packs the .deb with cargo-deb ([package.metadata.deb] in
#    heartbeat-sidecar/Cargo.toml), checks its control data and contents,
#    runs the binary unpacked from it, asks dpkg whether it would install
#    here, and verifies the unit it ships against the binary it ships.
# What it lacks it installs: cargo-zigbuild and cargo-deb (cargo install
# --locked), zig from PyPI (ziglang, in a virtualenv under
# ~/.cache/hp-heartbeat). Exits non-zero, saying why, when anything fails.
set -euo pipefail
cd "$(dirname "$0")/.."

glibc=2.17
target=x86_64-unknown-linux-gnu
ziglang_version=0.15.2 # the zig cargo-zigbuild was tried with; 0.9 or newer works
zig_venv="$HOME/.cache/hp-heartbeat/ziglang"

step() { printf '==> %s\n' "$*"; }
fail() { printf 'release.sh: FAILED: %s\n' "$*" >&2; exit 1; }
started=$SECONDS

# --- tools --------------------------------------------------------------
if ! cargo-zigbuild --version >/dev/null 2>&1; then
  step "cargo install --locked cargo-zigbuild"
  cargo install --locked --quiet cargo-zigbuild
fi
if ! cargo-deb --version >/dev/null 2>&1; then
  step "cargo install --locked cargo-deb"
  cargo install --locked --quiet cargo-deb
fi
if ! "$zig_venv/bin/python3" -m ziglang version >/dev/null 2>&1; then
  step "zig from PyPI: ziglang==$ziglang_version into $zig_venv"
  python3 -m venv "$zig_venv"
  "$zig_venv/bin/pip" install --quiet --disable-pip-version-check "ziglang==$ziglang_version"
fi
# cargo-zigbuild runs `python3 -m ziglang` with this python.
export CARGO_ZIGBUILD_PYTHON_PATH="$zig_venv/bin/python3"
for tool in objdump dpkg-deb python3; do
  command -v "$tool" >/dev/null || fail "$tool is missing (Debian: apt-get install binutils dpkg python3)"
done

# --- build --------------------------------------------------------------
step "cargo zigbuild --release for $target, glibc $glibc"
cargo zigbuild --locked --release -p heartbeat-sidecar --target "$target.$glibc"
target_dir=$(cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
bin="$target_dir/$target/release/heartbeat-sidecar"
[ -x "$bin" ] || fail "no binary at $bin"

# --- what it needs from the host ----------------------------------------
step "objdump -T: no symbol needs a glibc newer than $glibc"
newest=""
for v in $(objdump -T "$bin" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/^GLIBC_//' | sort -u -V); do
  newest=$v
  if [ "$(printf '%s\n%s\n' "$v" "$glibc" | sort -V | tail -n 1)" != "$glibc" ]; then
    objdump -T "$bin" | grep "GLIBC_$v\b" >&2
    fail "the symbols above need GLIBC_$v, newer than $glibc"
  fi
done
[ -n "$newest" ] || fail "objdump -T found no glibc symbol in $bin: not a dynamic glibc binary?"
echo "newest glibc symbol version: GLIBC_$newest"
needed=$(objdump -p "$bin" | awk '$1 == "NEEDED" { print $2 }' | sort | tr '\n' ' ')
for lib in $needed; do
  case $lib in
    libc.so.6 | libm.so.6 | libpthread.so.0 | libdl.so.2 | librt.so.1 | libutil.so.1 | \
      ld-linux-x86-64.so.2) ;;
    *) fail "links $lib: not part of glibc, so not on every host (and not in the .deb's Depends)" ;;
  esac
done
echo "links: $needed"

# --- it runs ------------------------------------------------------------
step "run it: --version, one run, status --json"
version=$(cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json, sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"] == "heartbeat-sidecar"))')
[ "$("$bin" --version)" = "heartbeat-sidecar $version" ] || fail "--version says '$("$bin" --version)', not heartbeat-sidecar $version"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
# Only the temp store: no Supabase from the caller's environment.
isolated=(env -u SUPABASE_URL -u SUPABASE_SECRET_KEY -u SUPABASE_SERVICE_ROLE_KEY -u SUPABASE_SERVICE_KEY
  -u STATE_DIRECTORY HP_STORE="$scratch/heartbeat.db" HP_LOG=warn)
"${isolated[@]}" "$bin" run --name release-check -- true || fail "run --name release-check -- true exited $?"
"${isolated[@]}" "$bin" status --json >"$scratch/status.json" || fail "status --json exited $?"
python3 - "$scratch/status.json" "$version" <<'EOF' || fail "status --json did not show the release-check row as expected"
import json, sys
rows = [r for r in json.load(open(sys.argv[1])) if r["worker_name"] == "release-check"]
assert len(rows) == 1, rows
row = rows[0]
assert row["status"] == "stopped" and row["exit_code"] == 0, row
assert row["reporter"] == "heartbeat-sidecar/" + sys.argv[2], row
print("row: release-check", row["status"], "exit_code", row["exit_code"], "reporter", row["reporter"])
EOF

# --- the .deb -------------------------------------------------------------
step "cargo deb"
deb=$(cargo deb --locked --no-build --no-strip -p heartbeat-sidecar --target "$target" | tail -n 1)
[ -f "$deb" ] || fail "cargo deb made no package (said: $deb)"
dpkg-deb -I "$deb" >"$scratch/control"
dpkg-deb -c "$deb" >"$scratch/contents"
grep -q "^ Package: heartbeat-sidecar$" "$scratch/control" || fail "control: Package"
grep -q "^ Version: $version-1$" "$scratch/control" || fail "control: Version is not $version-1"
grep -q "^ Architecture: amd64$" "$scratch/control" || fail "control: Architecture"
grep -q "^ Depends: libc6 (>= $glibc)" "$scratch/control" || fail "control: Depends does not ask for glibc $glibc"
for path in ./usr/bin/heartbeat-sidecar \
  ./usr/share/doc/heartbeat-sidecar/examples/roundtable-worker.service \
  ./usr/share/doc/heartbeat-sidecar/sidecar.md; do
  grep -q " $path$" "$scratch/contents" || fail "the .deb lacks $path"
done
grep -q '^-rwxr-xr-x 0/0 .* ./usr/bin/heartbeat-sidecar$' "$scratch/contents" ||
  fail "usr/bin/heartbeat-sidecar is not root-owned 0755 in the .deb"
dpkg-deb -x "$deb" "$scratch/unpacked"
cmp -s "$bin" "$scratch/unpacked/usr/bin/heartbeat-sidecar" || fail "the .deb's binary is not the one proved above"
"$scratch/unpacked/usr/bin/heartbeat-sidecar" --version >/dev/null || fail "the .deb's binary does not run"
cmp -s examples/systemd/roundtable-worker.service \
  "$scratch/unpacked/usr/share/doc/heartbeat-sidecar/examples/roundtable-worker.service" ||
  fail "the .deb's unit is not examples/systemd/roundtable-worker.service"
# Installable here: its dependencies met, nothing in the way (dpkg's own
# check; needs root for dpkg's lock).
if [ "$(id -u)" = 0 ]; then
  dpkg --dry-run -i "$deb" >"$scratch/dpkg.log" 2>&1 || { cat "$scratch/dpkg.log" >&2; fail "dpkg --dry-run -i $deb"; }
else
  echo "not root: dpkg --dry-run -i skipped"
fi
# The unit it ships names the binary where the .deb puts it.
if command -v systemd-analyze >/dev/null; then
  mkdir -p "$scratch/unpacked/usr/lib/systemd" "$scratch/unpacked/etc/systemd/system"
  cp -a /usr/lib/systemd/system "$scratch/unpacked/usr/lib/systemd/"
  cp "$scratch/unpacked/usr/share/doc/heartbeat-sidecar/examples/roundtable-worker.service" "$scratch/unpacked/etc/systemd/system/"
  SYSTEMD_COLORS=0 systemd-analyze verify --man=no --root="$scratch/unpacked" roundtable-worker.service ||
    fail "systemd-analyze verify: the .deb's unit and binary do not fit"
else
  echo "no systemd-analyze: the unit's check against the .deb skipped"
fi

size=$(stat -c %s "$bin")
echo
echo "release: $bin ($((size / 1024)) KiB, glibc >= $glibc, newest symbol GLIBC_$newest)"
echo "release: $deb ($(($(stat -c %s "$deb") / 1024)) KiB)"
echo "release: done in $((SECONDS - started)) s"
