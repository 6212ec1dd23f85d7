#!/bin/sh
# Post `tsk8s diff --format markdown` output as merge-request notes, updated in place.
#
# Usage: gitlab-note.sh DIFF.md   (in a GitLab merge-request pipeline; needs curl and jq)
# Env:   TSK8S_NOTE_TOKEN (project access token, scope api), and GitLab's CI_API_V4_URL,
#        CI_PROJECT_ID, CI_MERGE_REQUEST_IID.
#
# Every body of the diff starts with the line `<!-- tsk8s-diff -->`; split parts also carry
# `<!-- tsk8s-diff-part N/M -->`. Our existing notes (body starting with the marker), ordered by
# part number, are updated in order; missing ones are created; surplus ones deleted.
set -eu

file=$1
marker='<!-- tsk8s-diff -->'
api="$CI_API_V4_URL/projects/$CI_PROJECT_ID/merge_requests/$CI_MERGE_REQUEST_IID/notes"
auth="PRIVATE-TOKEN: $TSK8S_NOTE_TOKEN"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Split the output into one file per body, before each marker line.
awk -v m="$marker" -v d="$tmp" '
  $0 == m { n++ }
  n > 0   { f = sprintf("%s/body-%04d.md", d, n); print > f }
' "$file"
if ! ls "$tmp"/body-*.md >/dev/null 2>&1; then
  printf '%s\n_tsk8s: no changes._\n' "$marker" > "$tmp/body-0001.md"
fi

# Our notes, oldest first, then by part number.
page=1
: > "$tmp/notes.json"
while :; do
  curl -fsS -H "$auth" "$api?per_page=100&page=$page&sort=asc&order_by=created_at" > "$tmp/page.json"
  [ "$(jq length "$tmp/page.json")" -eq 0 ] && break
  jq -c '.[]' "$tmp/page.json" >> "$tmp/notes.json"
  page=$((page + 1))
done
jq -rs --arg m "$marker" '
  map(select(.system == false and (.body | startswith($m))))
  | map(. + {part: ((.body | capture("<!-- tsk8s-diff-part (?<n>[0-9]+)/[0-9]+ -->").n // "1") | tonumber)})
  | sort_by(.part, .id) | .[].id' "$tmp/notes.json" > "$tmp/ids"

i=0
for body in "$tmp"/body-*.md; do
  i=$((i + 1))
  id=$(sed -n "${i}p" "$tmp/ids")
  payload=$(jq -Rs '{body: .}' "$body")
  if [ -n "$id" ]; then
    curl -fsS -X PUT -H "$auth" -H 'Content-Type: application/json' --data "$payload" "$api/$id" >/dev/null
  else
    curl -fsS -X POST -H "$auth" -H 'Content-Type: application/json' --data "$payload" "$api" >/dev/null
  fi
done
# Delete the notes a shorter diff no longer needs.
tail -n +"$((i + 1))" "$tmp/ids" | while read -r id; do
  curl -fsS -X DELETE -H "$auth" "$api/$id" >/dev/null
done
echo "tsk8s diff: $i note(s) posted"
