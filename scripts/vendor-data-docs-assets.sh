#!/bin/sh
# Fetch the CSS, JS and fonts that Great Expectations' Data Docs pages use, from npm, into
# vendor/data-docs/<package>/ (or $EHRLIFT_DATA_DOCS_ASSETS), so the pages make no external request.
# Each package keeps its own LICENSE file. Run once per checkout; needs npm and python3.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
dest=${EHRLIFT_DATA_DOCS_ASSETS:-$here/vendor/data-docs}
mkdir -p "$dest"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -c 'import json,sys; print("\n".join(sorted({a["package"] for a in json.load(open(sys.argv[1]))["assets"]})))' \
    "$here/expectations/data_docs_assets.json" |
while read -r pkg; do
    target="$dest/$(echo "$pkg" | tr '/@' '__')"
    [ -d "$target" ] && continue
    (cd "$tmp" && npm pack --silent "$pkg" >/dev/null)
    mkdir -p "$target"
    tar -xzf "$tmp"/*.tgz -C "$target" --strip-components=1
    rm -f "$tmp"/*.tgz
    echo "vendored $pkg"
done
