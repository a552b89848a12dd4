#!/usr/bin/env bash
# vendor/check.sh: proves that vendor/glommio is exactly the published glommio crate plus the patch
# series in vendor/patches/glommio, and nothing else.
#
#   vendor/check.sh                        fetch (or reuse) the crate, check its sha256, apply the series,
#                                          diff against vendor/glommio; exit 1 with the diff if they differ
#   vendor/check.sh --tree DIR             write upstream plus the series to DIR as a git repository, one
#                                          commit per patch (the starting point for editing or rebasing)
#   vendor/check.sh --print-rebase-help    how to change a patch, add one, or move to a new release
#
# Runs from any directory. The crate is cached in $MESHGATE_VENDOR_CACHE (default
# ~/.cache/meshgate/vendor); cargo's own registry cache is used when it already holds the file.
set -euo pipefail

# The release the series applies to, and the checksum crates.io records for it (the "cksum" of
# version 0.9.0 in https://index.crates.io/gl/om/glommio, which is what Cargo verifies on download).
CRATE=glommio
VERSION=0.9.0
SHA256=e1f8bc1fce949d18098dc0a4e861314e40351a0144ebf61e59bdb5254a2273b2

vendor_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
vendored="$vendor_dir/$CRATE"
series_dir="$vendor_dir/patches/$CRATE"
cache_dir="${MESHGATE_VENDOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/meshgate/vendor}"
crate_file="$CRATE-$VERSION.crate"
url="https://static.crates.io/crates/$CRATE/$crate_file"

die() { echo "vendor/check.sh: $*" >&2; exit 1; }

print_rebase_help() {
    cat <<EOF
Changing the glommio patch series (see vendor/README.md, "Rebasing"):

  1. vendor/check.sh --tree /tmp/glommio-series
       a git repository: upstream $CRATE $VERSION as the first commit, then one commit per patch.
  2. In it, edit with ordinary git: amend a patch with 'git rebase -i', add one with a new commit
     (its message is the patch header: a subject line, then "What:" and "Why:").
     To move to a new release: replace the files of the first commit with the new crate's
     ('git checkout <first commit> && tar ... && git commit --amend', then 'git rebase' the patches
     onto it), update VERSION and SHA256 at the top of vendor/check.sh from crates.io's index.
  3. Regenerate the series and the vendored tree from it:
       rm vendor/patches/$CRATE/*.patch
       git -C /tmp/glommio-series format-patch --zero-commit --no-signature \\
           -o "\$PWD/vendor/patches/$CRATE" <first commit>..HEAD
       rm -rf vendor/$CRATE && mkdir vendor/$CRATE
       git -C /tmp/glommio-series archive HEAD | tar -x -C vendor/$CRATE
  4. vendor/check.sh (must pass), vendor/test-glommio.sh, then the engine's tests; describe the patch
     in vendor/README.md (one section per patch file).
EOF
}

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# Prints the path of a copy of the crate whose checksum is verified.
fetch_crate() {
    local f
    for f in "$cache_dir/$crate_file" "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/"$crate_file"; do
        if [[ -f "$f" && "$(sha256_of "$f")" == "$SHA256" ]]; then
            echo "$f"
            return
        fi
    done
    mkdir -p "$cache_dir"
    local tmp="$cache_dir/$crate_file.part"
    curl -fsSL --retry 3 -o "$tmp" "$url" || die "cannot download $url (and no cached copy)"
    local got
    got="$(sha256_of "$tmp")"
    if [[ "$got" != "$SHA256" ]]; then
        rm -f "$tmp"
        die "checksum mismatch for $url: expected $SHA256, got $got"
    fi
    mv "$tmp" "$cache_dir/$crate_file"
    echo "$cache_dir/$crate_file"
}

# Unpacks the verified crate into $1/$CRATE-$VERSION and applies the series there.
build_expected() {
    local work="$1" crate patch
    crate="$(fetch_crate)"
    tar -xzf "$crate" -C "$work"
    [[ -d "$work/$CRATE-$VERSION" ]] || die "$crate did not unpack to $CRATE-$VERSION/"
    shopt -s nullglob
    local patches=("$series_dir"/*.patch)
    shopt -u nullglob
    for patch in "${patches[@]}"; do
        # No fuzz: a patch must apply exactly where it was made.
        patch -d "$work/$CRATE-$VERSION" -p1 --fuzz=0 --batch --forward --no-backup-if-mismatch \
            --quiet -i "$patch" >&2 || die "$(basename "$patch") does not apply to $CRATE $VERSION"
    done
    echo "${#patches[@]}"
}

make_tree() {
    local dest="$1" crate patch
    [[ -e "$dest" ]] && die "$dest exists"
    crate="$(fetch_crate)"
    mkdir -p "$dest"
    tar -xzf "$crate" -C "$dest" --strip-components=1
    git -C "$dest" init -q
    git -C "$dest" add -A
    git -C "$dest" -c user.name=meshgate -c user.email=meshgate@example.invalid \
        commit -q -m "$CRATE $VERSION as published on crates.io (sha256 $SHA256)"
    for patch in "$series_dir"/*.patch; do
        git -C "$dest" -c user.name=meshgate -c user.email=meshgate@example.invalid am -q "$patch"
    done
    echo "$dest: upstream $CRATE $VERSION plus $(ls "$series_dir"/*.patch | wc -l) patches"
    git -C "$dest" log --oneline
}

case "${1:-}" in
    "") ;;
    --print-rebase-help) print_rebase_help; exit 0 ;;
    --tree) [[ $# -eq 2 ]] || die "usage: vendor/check.sh --tree DIR"; make_tree "$2"; exit 0 ;;
    -h|--help) sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (try --help)" ;;
esac

[[ -d "$vendored" ]] || die "$vendored is missing"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
count="$(build_expected "$work")"

# Only what cargo writes into the directory itself is ignored: build output and the lock file that
# vendor/test-glommio.sh installs there (both git-ignored in vendor/.gitignore).
if ! diff -r -u --no-dereference --exclude=target --exclude=Cargo.lock \
    "$work/$CRATE-$VERSION" "$vendored" >"$work/diff"; then
    sed -e "s#$work/$CRATE-$VERSION#upstream+series#g" -e "s#$vendor_dir/##g" "$work/diff"
    echo "vendor/check.sh: vendor/$CRATE differs from $CRATE $VERSION plus the $count patches in" \
        "vendor/patches/$CRATE (diff above: '-' is upstream+series, '+' is the vendored tree)." >&2
    echo "Change vendored code through a patch: vendor/check.sh --print-rebase-help" >&2
    exit 1
fi
echo "vendor/$CRATE == $CRATE $VERSION (sha256 verified) + $count patches"
