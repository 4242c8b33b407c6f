#!/usr/bin/env bash
# Prints the CHANGELOG.md section of one released version (without its heading and without the link
# references at the end of the file): the GitHub release notes of tag v<VERSION>.
#
#   .github/scripts/changelog-notes.sh 0.1.0 [CHANGELOG.md]
#
# Fails when the version has no section or the section is empty, so a release is never created
# with blank notes.
set -euo pipefail

version="${1:?usage: changelog-notes.sh VERSION [CHANGELOG]}"
changelog="${2:-CHANGELOG.md}"

notes="$(awk -v want="## [${version}]" '
  # A release heading is "## [X.Y.Z] - DATE"; compare literally (dots are no wildcards here).
  index($0, want) == 1 { found = 1; next }
  found && /^## \[/ { exit }
  found && /^\[[^]]+\]: / { exit }
  found { print }
' "$changelog")"

# Trim leading and trailing blank lines.
notes="$(printf '%s\n' "$notes" | sed -e '/./,$!d' | tac | sed -e '/./,$!d' | tac)"
if [ -z "$notes" ]; then
  echo "changelog-notes: no section for version ${version} in ${changelog}" >&2
  exit 1
fi
printf '%s\n' "$notes"
