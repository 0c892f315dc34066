# Shared by build-deb.sh and build-rpm.sh (sourced, not run): versions, build tools, a clean source copy.
# shellcheck shell=bash

top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# Packages are built with the system's tools and Python only (no pyenv, virtualenv or PYTHONPATH).
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
unset PYTHONPATH PYTHONHOME VIRTUAL_ENV

# The upstream version, from kesd/__init__.py (the one place it is written).
upstream_version() {
  sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$top/kesd/__init__.py"
}

# Install the Debian packages named in "$@" that are missing (root on Debian only; else explain).
ensure_apt_packages() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "missing build tools: ${missing[*]} (install them, or run as root on Debian)" >&2
    exit 1
  fi
  echo "== installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Copy the source tree to "$1": the files git knows (tracked, or new and not ignored), else the
# whole tree without build output, virtualenvs and caches.
copy_source() {
  local dest=$1
  mkdir -p "$dest"
  if git -C "$top" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    (cd "$top" && git ls-files -z --cached --others --exclude-standard |
      while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done |
      tar --null -T - -cf -) | tar -C "$dest" -xf -
  else
    tar -C "$top" --exclude=./.venv --exclude=./dist --exclude=./build --exclude=.git \
      --exclude=__pycache__ --exclude=.pytest_cache --exclude=.ruff_cache --exclude='*.egg-info' \
      -cf - . | tar -C "$dest" -xf -
  fi
}

# The commit time of the checkout (reproducible dates), else now.
source_date_epoch() {
  git -C "$top" log -1 --format=%ct 2>/dev/null || date +%s
}

# The shared test vectors beside the checkout, if present (the package builds run the unit tests).
vectors_dir() {
  local d=${KESD_VECTORS:-$top/../shared/reference/vectors}
  [ -d "$d" ] && (cd "$d" && pwd)
  return 0
}

# The options both build scripts take: --version V, --out DIR and --no-LINTER (lintian or rpmlint).
# Sets $version (default: kesd's version with revision/release 1), $out (default dist/) and $lint.
parse_build_args() {
  local linter=$1
  shift
  version="$(upstream_version)-1"
  out=$top/dist
  lint=1
  while [ $# -gt 0 ]; do
    case $1 in
      --version) version=$2; shift 2 ;;
      --out) out=$2; shift 2 ;;
      "--no-$linter") lint=0; shift ;;
      *) echo "usage: $0 [--version V-R] [--out DIR] [--no-$linter]" >&2; exit 2 ;;
    esac
  done
}
