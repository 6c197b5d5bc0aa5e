#!/usr/bin/env bash
# The shell side of the campaigns pipeline (ci/github/campaigns.yml), kept here so it is
# tested (tests/test_ci_workflow.py) and the same on any CI system.
#
#   ci/campaigns.sh plan             pull request: validate, plan and check the committed
#                                    saved plan of every campaign the change touches;
#                                    writes the comment body to $CAMPAIGN_OUT/comment.md
#   ci/campaigns.sh apply            merge: `campaign apply PLAN` for every touched campaign,
#                                    each attempted even when another fails
#   ci/campaigns.sh comment FILE     create or update in place the pull request's one plan
#                                    comment (found by its marker) with `gh api`
#
# Environment:
#   CAMPAIGN_BASE        git ref to compare with: the base branch (plan), the commit
#                        before the push (apply). Required unless CAMPAIGNS is set.
#   CAMPAIGNS            apply: the campaign files to apply (space-separated) instead of
#                        those changed since CAMPAIGN_BASE (manual runs)
#   CAMPAIGNS_DIR        where campaign files live (default: campaigns)
#   CAMPAIGN_STATE       the ledger, passed as --state when set
#   CAMPAIGN_APPLY_ARGS  more apply options (--resend-uncertain, --allow-changes, --send-now)
#   CAMPAIGN_OUT         folder for outputs (default: .campaign/ci)
#   CAMPAIGN_COMMENT_LIMIT  bytes of comment body before the plans move to the step
#                        summary (default 65000; GitHub's limit is 65,536 characters)
#   GITHUB_STEP_SUMMARY  when set, the plan or apply summary is appended to it
#   GITHUB_REPOSITORY, PR_NUMBER   comment: where to post
#
# A campaign's saved plan is the file beside it: campaigns/x.yaml -> campaigns/x.plan.json.
# Exit codes: plan 0 every plan current, 1 something invalid, stale or missing;
# apply 0 all sent, else the highest exit code of `campaign apply` (3 partial, 4 refused).
set -euo pipefail
shopt -s inherit_errexit  # a failing `campaign affected` inside $(...) stops the script too

MARKER='<!-- campaign-runner:plan -->'
COMMENT_LIMIT="${CAMPAIGN_COMMENT_LIMIT:-65000}"  # GitHub refuses comment bodies over 65,536 characters
dir="${CAMPAIGNS_DIR:-campaigns}"
out="${CAMPAIGN_OUT:-.campaign/ci}"
state_args=()
if [[ -n "${CAMPAIGN_STATE:-}" ]]; then state_args=(--state "$CAMPAIGN_STATE"); fi

plan_of() { printf '%s.plan.json\n' "${1%.*}"; }

summarize() {  # append a file to the job summary when there is one
  if [[ -n "${GITHUB_STEP_SUMMARY:-}" ]]; then cat "$1" >> "$GITHUB_STEP_SUMMARY"; fi
}

touched() {  # the affected campaigns, one a line; fails the script if git or the ref fails
  campaign affected --since "${CAMPAIGN_BASE:?CAMPAIGN_BASE must name a git ref}" "$dir"
}

cmd_plan() {
  mkdir -p "$out"
  local campaigns deleted body="$out/comment.md" statuses="$out/status.md" details="$out/details.md"
  campaigns=$(touched)
  deleted=$(campaign affected --since "$CAMPAIGN_BASE" --deleted "$dir")
  : > "$statuses"; : > "$details"
  local failed=0 f saved rc check
  while IFS= read -r f; do
    [[ -n "$f" ]] || continue
    saved=$(plan_of "$f")
    rc=0; campaign validate --format github "$f" || rc=$?
    if (( rc != 0 )); then
      failed=1; echo "- ❌ \`$f\`: invalid (see the annotations)" >> "$statuses"; continue
    fi
    rc=0; campaign plan --format markdown "${state_args[@]}" "$f" >> "$details" 2>> "$out/errors.log" || rc=$?
    echo >> "$details"
    if (( rc != 0 )); then
      failed=1; echo "- ❌ \`$f\`: plan failed (exit $rc)" >> "$statuses"; continue
    fi
    if [[ ! -f "$saved" ]]; then
      failed=1
      echo "- ❌ \`$f\`: no saved plan; run \`campaign plan $f -o $saved\` and commit it" >> "$statuses"
      continue
    fi
    rc=0; check=$(campaign plan "$f" --check "$saved" 2>&1) || rc=$?
    if (( rc == 0 )); then
      echo "- ✅ \`$f\`: \`$saved\` is current; merging sends exactly this plan" >> "$statuses"
    else
      failed=1
      echo "- ❌ \`$f\`: \`$saved\` is stale; run \`campaign plan $f -o $saved\` and commit it" >> "$statuses"
      printf '%s\n' "$check" | sed -n 's/^.*: stale: /  - /p' >> "$statuses"
    fi
  done <<< "$campaigns"
  while IFS= read -r f; do
    [[ -n "$f" ]] || continue
    echo "- 🗑️ \`$f\`: deleted; nothing is sent (its ledger history stays)" >> "$statuses"
  done <<< "$deleted"
  if [[ ! -s "$statuses" ]]; then echo "No campaign changed since \`$CAMPAIGN_BASE\`." >> "$statuses"; fi
  { echo "$MARKER"; echo "## Campaign plans"; echo; cat "$statuses"; echo; cat "$details"; } > "$body"
  if (( $(wc -c < "$body") > COMMENT_LIMIT )); then  # keep every status line, drop the details
    { echo "$MARKER"; echo "## Campaign plans"; echo; cat "$statuses"; echo
      echo "_The plans are too long for one comment: see the job summary and log._"; } > "$body"
    summarize "$details"
  fi
  summarize "$body"
  cat "$body"
  return "$failed"
}

cmd_apply() {
  if [[ -z "${CAMPAIGN_STATE:-}" ]]; then
    # A ledger on the runner's disk is gone after the job: the next apply would resend.
    echo "::error::CAMPAIGN_STATE is not set: apply needs a ledger that outlives the job (see docs/ci.md)"
    return 2
  fi
  mkdir -p "$out"
  local campaigns f saved rc worst=0 report="$out/apply.md"
  if [[ -n "${CAMPAIGNS:-}" ]]; then
    local named=()
    read -r -a named <<< "$CAMPAIGNS"  # split on spaces, no glob expansion
    campaigns=$(printf '%s\n' "${named[@]}")
  else
    campaigns=$(touched)
  fi
  local extra=()
  if [[ -n "${CAMPAIGN_APPLY_ARGS:-}" ]]; then read -r -a extra <<< "$CAMPAIGN_APPLY_ARGS"; fi
  { echo "## Campaigns applied"; echo; echo "| campaign | exit | result |"; echo "|---|---|---|"; } > "$report"
  while IFS= read -r f; do
    [[ -n "$f" ]] || continue
    saved=$(plan_of "$f")
    if [[ ! -f "$saved" ]]; then
      echo "::error file=$f::no reviewed plan ($saved): nothing sent"
      rc=4
    else
      echo "::group::campaign apply $saved"
      rc=0; campaign apply --yes --quiet "${state_args[@]}" "${extra[@]}" "$saved" || rc=$?
      echo "::endgroup::"
      if (( rc != 0 )); then echo "::error file=$f::campaign apply exited $rc"; fi
    fi
    echo "| \`$f\` | $rc | $(meaning "$rc") |" >> "$report"
    if (( rc > worst )); then worst=$rc; fi
  done <<< "$campaigns"
  summarize "$report"
  cat "$report"
  return "$worst"
}

meaning() {
  case "$1" in
    0) echo "sent (or already sent)" ;;
    1) echo "invalid campaign" ;;
    2) echo "usage error" ;;
    3) echo "some batches failed or are uncertain: see campaign status" ;;
    4) echo "refused: stale plan, changed inputs, passed schedule or lock" ;;
    *) echo "unexpected error" ;;
  esac
}

cmd_comment() {
  local file="${1:?usage: ci/campaigns.sh comment BODY_FILE}" id
  local comments="repos/${GITHUB_REPOSITORY:?}/issues/${PR_NUMBER:?}/comments"
  # gh prints one JSON array per page; python (there wherever campaign is) finds the marker.
  id=$(gh api --paginate "$comments?per_page=100" | python3 -c '
import json, sys
text, marker, at = sys.stdin.read(), sys.argv[1], 0
decoder = json.JSONDecoder()
while at < len(text.rstrip()):
    page, at = decoder.raw_decode(text, at)
    while at < len(text) and text[at].isspace():
        at += 1
    for comment in page:
        if comment.get("body", "").startswith(marker):
            print(comment["id"])
            sys.exit(0)
' "$MARKER")
  if [[ -n "$id" ]]; then
    gh api -X PATCH "repos/$GITHUB_REPOSITORY/issues/comments/$id" -F "body=@$file" > /dev/null
  else
    gh api -X POST "$comments" -F "body=@$file" > /dev/null
  fi
}

case "${1:-}" in
  plan) cmd_plan ;;
  apply) cmd_apply ;;
  comment) shift; cmd_comment "$@" ;;
  *) echo "usage: ci/campaigns.sh plan|apply|comment FILE" >&2; exit 2 ;;
esac
