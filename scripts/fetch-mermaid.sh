#!/usr/bin/env bash
# Fetch the Mermaid renderer the tutorial draws its diagrams with into docs/js/ (not committed:
# 3.5 MB of someone else's build). A pinned version from the npm registry, checked against its
# sha256, so the site needs no CDN and every machine gets the same file. `make install` runs it.
set -euo pipefail
VERSION=11.17.2
SHA256=581ed7d74bd9048d0e3a91363927d72ef22942d7722546b27f7cc29e35390eb8
target="$(cd "$(dirname "$0")/.." && pwd)/docs/js/mermaid.min.js"

if [ -f "$target" ] && echo "$SHA256  $target" | sha256sum --check --status; then
  exit 0
fi
if ! command -v npm >/dev/null; then
  echo "npm is needed once to fetch Mermaid $VERSION (Debian: apt-get install npm)" >&2
  exit 1
fi
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
(cd "$scratch" && npm pack "mermaid@$VERSION" --silent >/dev/null && tar -xzf "mermaid-$VERSION.tgz" package/dist/mermaid.min.js)
echo "$SHA256  $scratch/package/dist/mermaid.min.js" | sha256sum --check --status \
  || { echo "mermaid@$VERSION from npm does not match its recorded sha256" >&2; exit 1; }
cp "$scratch/package/dist/mermaid.min.js" "$target"
echo "fetched Mermaid $VERSION into docs/js/"
