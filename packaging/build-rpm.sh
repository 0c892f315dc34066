#!/usr/bin/env bash
# Build dist/kesd-<version>-<release>.<arch>.rpm from this checkout, then run rpmlint on it.
# Usage: packaging/build-rpm.sh [--version VERSION-RELEASE] [--out DIR] [--no-rpmlint]
#   --version  e.g. 0.1.0-2 (default: kesd's version, release 1)
#   --out      where the .rpm goes (default: dist/ in the checkout)
# Installs rpm (rpmbuild) and the other build tools when run as root on Debian; rpmbuild runs with
# --nodeps there, since Debian's rpm database does not know the BuildRequires (see kesd.spec).
set -euo pipefail
# shellcheck source=packaging/common.sh
. "$(dirname "$0")/common.sh"

parse_build_args rpmlint "$@"
case $version in
  *-*) upstream=${version%-*} release=${version##*-} ;;
  *) upstream=$version release=1 ;;
esac

if command -v dpkg-query >/dev/null; then
  ensure_apt_packages rpm gcc python3-build python3-setuptools python3-click python3-cryptography \
    python3-httptools python3-psutil python3-yaml python3-pytest
  [ "$lint" = 1 ] && ensure_apt_packages rpmlint
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/kesd-rpm.XXXXXX")
[ -n "${KESD_KEEP_BUILD:-}" ] && echo "build directory: $work (kept)" >&2 || trap 'rm -rf "$work"' EXIT
mkdir -p "$work/SOURCES" "$work/SPECS"
copy_source "$work/kesd-$upstream"
tar -C "$work" --owner=0 --group=0 -czf "$work/SOURCES/kesd-$upstream.tar.gz" "kesd-$upstream"
cp "$top/systemd/sysusers.d/kesd.conf" "$work/SOURCES/kesd.sysusers"

epoch=$(source_date_epoch)
spec=$work/SPECS/kesd.spec
cp "$top/packaging/rpm/kesd.spec" "$spec"
{
  echo "* $(LC_ALL=C date -u -d "@$epoch" '+%a %b %d %Y') kesd maintainers <kesd@users.noreply.github.com> - $upstream-$release"
  echo "- Built from the kesd source tree"
} >>"$spec"

vectors=$(vectors_dir)
echo "== building kesd $upstream-$release" >&2
SOURCE_DATE_EPOCH=$epoch KESD_VECTORS=${vectors:-/nonexistent} rpmbuild -bb --nodeps \
  --define "_topdir $work" --define "packager kesd maintainers <kesd@users.noreply.github.com>" --define "kesd_version $upstream" --define "kesd_release $release" \
  "$spec" >"$work/build.log" 2>&1 || {
  tail -40 "$work/build.log" >&2
  exit 1
}

mkdir -p "$out"
rpm=$(ls "$work"/RPMS/*/kesd-"$upstream"-*.rpm)
mv "$rpm" "$out/"
rpm=$out/$(basename "$rpm")
echo "$rpm"

if [ "$lint" = 1 ]; then
  echo "== rpmlint $(basename "$rpm")" >&2
  rpmlint -c "$top/packaging/rpm/rpmlint.toml" -r "$top/packaging/rpm/kesd.rpmlintrc" "$rpm" >&2
fi
