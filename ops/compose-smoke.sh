#!/usr/bin/env bash
# Brings the compose cluster up under its own project name, checks it end to end, and takes it
# down again with its volumes:
#   ops/compose-smoke.sh [path/to/jfk.flac]        (default: ../shared/corpus/jfk.flac)
# Checks: Redis refuses a client without the password; the API refuses a request without a key;
# /health answers the app's envelope; jfk.flac is transcribed at once; multilingual.mp3 (beside
# it) becomes a job that completes; Prometheus's sum(sayit_chunk_slots) is 10.
# Secrets not set in the environment are made up for the run. Needs docker compose (or
# docker-compose), curl, and the API's port 3000 and Prometheus's 9090 free on this host.
set -euo pipefail
cd "$(dirname "$0")/.."

short=${1:-../shared/corpus/jfk.flac}
long="$(dirname "$short")/multilingual.mp3"
for file in "$short" "$long"; do
  [[ -f "$file" ]] || { echo "missing $file (give the path to jfk.flac; multilingual.mp3 must be beside it)" >&2; exit 2; }
done

if docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
elif command -v docker-compose >/dev/null; then
  compose=(docker-compose)
else
  echo "neither 'docker compose' nor 'docker-compose' is installed" >&2
  exit 2
fi
compose+=(-p sayit-smoke)

random() { head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
export REDIS_PASSWORD="${REDIS_PASSWORD:-$(random)}"
export SAYIT_API_KEYS="${SAYIT_API_KEYS:-smoke-$(random)}"
export GRAFANA_ADMIN_PASSWORD="${GRAFANA_ADMIN_PASSWORD:-$(random)}"
key=${SAYIT_API_KEYS%%,*}
api=http://127.0.0.1:3000
prometheus=http://127.0.0.1:9090

teardown() { "${compose[@]}" down --volumes --remove-orphans >/dev/null 2>&1 || true; }
trap teardown EXIT
fail() {
  echo "FAIL: $*" >&2
  "${compose[@]}" logs --tail 50 >&2 || true
  exit 1
}
# Runs "$@" every 2 s until it succeeds or $1 seconds have passed.
retry() {
  local until=$((SECONDS + $1))
  shift
  until "$@"; do
    ((SECONDS < until)) || return 1
    sleep 2
  done
}

echo "== up"
"${compose[@]}" up -d --build

echo "== health"
healthy() {
  local body
  body=$(curl -fsS "$api/health") && grep -q '"success": true' <<<"$body" && grep -q '"status": "healthy"' <<<"$body"
}
retry 300 healthy || fail "the api node did not become healthy"

echo "== Redis asks for its password"
noauth=$("${compose[@]}" exec -T -e REDISCLI_AUTH= redis redis-cli ping 2>&1 || true)
grep -q NOAUTH <<<"$noauth" || fail "Redis answered without a password: $noauth"

echo "== the API asks for a key"
status=$(curl -sS -o /dev/null -w '%{http_code}' -F "file=@$short" "$api/api/transcribe")
[[ "$status" == 401 ]] || fail "an upload without a key answered $status"

echo "== a short upload"
answer=$(curl -fsS -H "Authorization: Bearer $key" -F "file=@$short" -F language=en "$api/api/transcribe")
grep -qi 'ask not what your country' <<<"$answer" || fail "unexpected transcription: $answer"

echo "== a job"
accepted=$(curl -fsS -H "Authorization: Bearer $key" -F "file=@$long" "$api/api/transcribe")
job=$(sed -n 's/.*"jobId": "\([0-9a-f]*\)".*/\1/p' <<<"$accepted")
[[ -n "$job" ]] || fail "no job id in: $accepted"
completed() {
  local state
  state=$(curl -fsS -H "Authorization: Bearer $key" "$api/api/transcribe/$job")
  grep -q '"status": "failed"' <<<"$state" && fail "job $job failed: $state"
  grep -q '"status": "completed"' <<<"$state"
}
retry 600 completed || fail "job $job did not complete"

echo "== Prometheus: sum(sayit_chunk_slots)"
slots() {
  curl -fsS "$prometheus/api/v1/query" --data-urlencode 'query=sum(sayit_chunk_slots)' | grep -q '"value":\[[0-9.e+]*,"10"\]'
}
retry 120 slots || fail "Prometheus does not see 10 chunk slots"

echo "OK: the compose cluster works"
