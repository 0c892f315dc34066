#!/usr/bin/env bash
# Build dist/kesd_<version>_<arch>.deb from this checkout, then run lintian on it.
# Usage: packaging/build-deb.sh [--version UPSTREAM-REVISION] [--out DIR] [--no-lintian]
#   --version  the package version (default: kesd's version with Debian revision 1, e.g. 0.1.0-1)
#   --out      where the .deb goes (default: dist/ in the checkout)
# Installs the build tools it needs (dpkg-dev, debhelper, dh-python, ...) when run as root on Debian.
set -euo pipefail
# shellcheck source=packaging/common.sh
. "$(dirname "$0")/common.sh"

parse_build_args lintian "$@"

ensure_apt_packages dpkg-dev debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools \
  python3-click python3-cryptography python3-httptools python3-psutil python3-yaml python3-pytest gcc
[ "$lint" = 1 ] && ensure_apt_packages lintian

work=$(mktemp -d "${TMPDIR:-/tmp}/kesd-deb.XXXXXX")
[ -n "${KESD_KEEP_BUILD:-}" ] && echo "build directory: $work (kept)" >&2 || trap 'rm -rf "$work"' EXIT
src=$work/kesd-${version%-*}
copy_source "$src"
cp -r "$top/packaging/deb/debian" "$src/debian"
epoch=$(source_date_epoch)
cat >"$src/debian/changelog" <<CHANGELOG
kesd ($version) unstable; urgency=medium

  * Built from the kesd source tree.

 -- kesd maintainers <kesd@users.noreply.github.com>  $(date -u -R -d "@$epoch")
CHANGELOG

vectors=$(vectors_dir)
echo "== building kesd $version in $src" >&2
(cd "$src" && SOURCE_DATE_EPOCH=$epoch KESD_VECTORS=${vectors:-/nonexistent} \
  dpkg-buildpackage -b -uc -us >"$work/build.log" 2>&1) || {
  tail -40 "$work/build.log" >&2
  exit 1
}

mkdir -p "$out"
deb=$(ls "$work"/kesd_*.deb)
mv "$deb" "$out/"
deb=$out/$(basename "$deb")
echo "$deb"

if [ "$lint" = 1 ]; then
  echo "== lintian $(basename "$deb")" >&2
  lintian --fail-on error "$deb" >&2
fi
