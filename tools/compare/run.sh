#!/usr/bin/env bash
# Builds shardgate, the three twilight-probe variants (twilight picks its transport compression
# by cargo feature, so one binary per mode, each in its own target dir) and the comparison
# driver, all in release, then runs the full comparison from the repository root.
#
#   tools/compare/run.sh                      # zstd-stream, zlib-stream, none, payload; 3 runs each
#   tools/compare/run.sh --repeat 5 --modes none --json-out /tmp/compare.json
#   tools/compare/run.sh --rates 500,2000,4000,0  # 3 fixed rates (runs of at most 20 s,
#                                             # --seconds-per-run) and as read: about 45 minutes
#
# Arguments go to the driver (`target/release/compare --help`). The markdown (the command line
# and date, a summary per rate and mode, the tables) goes to stdout, progress to stderr; exit
# status 1 when a run failed its checks.
set -euo pipefail
cd "$(dirname "$0")/../.."

cargo build --release -p shardgate -p compare
for variant in zstd zlib none; do
    features=()
    if [[ $variant != none ]]; then
        features=(--features "$variant")
    fi
    cargo build --release --manifest-path tools/twilight-probe/Cargo.toml "${features[@]}" \
        --target-dir "target/twilight-$variant"
done

echo "compare: $(date -u +%Y-%m-%dT%H:%MZ)" >&2
exec target/release/compare "$@"
