#!/usr/bin/env bash
# Regenerate the committed reference leaderboard: run the reference recipes into a fresh store, then export
# the ranked table (Markdown, CSV, HTML with plots). About 10 minutes on a 2-core CPU.
#   bash leaderboard/regenerate.sh
set -euo pipefail
cd "$(dirname "$0")/.."
store=leaderboard/reference.sqlite          # git-ignored; the exports below are what is committed
rm -rf "$store" runs/reference   # a fresh store and fresh runs: every result is recorded anew
export KIT_LEADERBOARD_URL="sqlite:///$store"
for recipe in recipes/quickstart.yaml recipes/digits_features.yaml; do
  [ -f "$recipe" ] && kit run "$recipe" --set output_dir=runs/reference --force
done
kit leaderboard --format md --output leaderboard/README.md
kit leaderboard --format csv --output leaderboard/reference.csv
kit leaderboard --format html --output leaderboard/index.html
kit leaderboard --no-group --format csv --output leaderboard/reference_all.csv
