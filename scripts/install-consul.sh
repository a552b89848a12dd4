#!/bin/sh
# scripts/install-consul.sh DIR — installs a Consul agent binary (1.8.7, from Debian 11's package) as
# DIR/consul, for the tests that check meshgate against a real Consul CA (crates/meshgate/tests/consul.rs).
# It fetches the .deb with a private apt configuration under DIR/.apt and unpacks only the binary, so the
# machine's apt sources and installed packages are left alone. Does nothing when DIR/consul already runs.
set -eu
dir=${1:?usage: scripts/install-consul.sh DIR}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
if [ -x "$dir/consul" ] && "$dir/consul" version >/dev/null 2>&1; then
    exit 0
fi
apt_dir=$dir/.apt
mkdir -p "$apt_dir/state/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/pkg"
echo 'deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bullseye main' \
    > "$apt_dir/sources.list"
{
    echo "Dir::Etc::SourceList \"$apt_dir/sources.list\";"
    echo 'Dir::Etc::SourceParts "/dev/null";'
    echo "Dir::State::Lists \"$apt_dir/state/lists\";"
    echo "Dir::Cache \"$apt_dir/cache\";"
} > "$apt_dir/apt.conf"
APT_CONFIG=$apt_dir/apt.conf
export APT_CONFIG
apt-get -qq update
cd "$apt_dir/pkg"
apt-get -qq download 'consul=1.8.7*' 2>/dev/null || apt-get -qq download 'consul=1.8.7*'
dpkg-deb -x consul_*.deb unpacked
cp unpacked/usr/bin/consul "$dir/consul"
"$dir/consul" version | head -n 1
