#!/bin/bash
# Runs each example the way a Host runs programs, and checks it end to end:
# build the binary, `docker build` the folder (never pulls: FROM scratch), run it
# under gVisor with a read-only root FS, no capabilities and one writable /state,
# read /watcher/status, send messages and see their effect, `docker stop` (must
# exit 0 within a few seconds), start it again (its /state must have survived),
# then remove the container, the image and the state folder.
#
#   examples/smoke-test.sh [simple-counter|watcher-server|trading-long ...]
#
# Needs: docker (with the runsc runtime), curl, jq, Go. RUNTIME=runc to try without gVisor.
set -euo pipefail
cd "$(dirname "$0")"

RUNTIME="${RUNTIME:-runsc}"
EXAMPLES=("$@")
[ ${#EXAMPLES[@]} -gt 0 ] || EXAMPLES=(simple-counter watcher-server trading-long)

container="" image="" state="" port=""
cleanup() {
	[ -z "$container" ] || docker rm -f "$container" >/dev/null 2>&1 || true
	[ -z "$image" ] || docker rmi "$image" >/dev/null 2>&1 || true
	[ -z "$state" ] || rm -rf "$state"
	container="" image="" state=""
}
trap cleanup EXIT

fail() {
	echo "FAIL [$example]: $*" >&2
	[ -z "$container" ] || docker logs --tail 30 "$container" >&2 || true
	exit 1
}
ok() { echo "  ok: $*"; }

free_port() {
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

api() { curl -fsS --max-time 10 "http://127.0.0.1:$port/watcher/$1"; }
message() {
	curl -fsS --max-time 10 -X POST -H 'Content-Type: application/json' \
		-d "$(jq -cn --arg c "$1" '{content: $c}')" "http://127.0.0.1:$port/watcher/message"
}
var() { api varState | jq -r ".variables.$1"; }

wait_ready() {
	for _ in $(seq 1 100); do
		if [ "$(api status 2>/dev/null | jq -r .state 2>/dev/null)" = Ready ]; then return 0; fi
		sleep 0.1
	done
	fail "/watcher/status never answered Ready"
}

stop_clean() {
	local started ended code
	started=$(date +%s.%N)
	docker stop -t 10 "$container" >/dev/null
	ended=$(date +%s.%N)
	code=$(docker inspect -f '{{.State.ExitCode}}' "$container")
	[ "$code" = 0 ] || fail "exit code $code after SIGTERM"
	local took
	took=$(awk -v a="$started" -v b="$ended" 'BEGIN { printf "%.2f", b - a }')
	awk -v t="$took" 'BEGIN { exit !(t < 5) }' || fail "docker stop took $took s"
	ok "SIGTERM: exit 0 in $took s"
}

restart() {
	docker start "$container" >/dev/null
	wait_ready
}

check_simple_counter() {
	local before after reply
	before=$(var count)
	reply=$(message "add 1000" | jq -r .reply)
	after=$(var count)
	[ "$after" -ge $((before + 1000)) ] || fail "add 1000: count $before -> $after ($reply)"
	ok "add 1000: count $before -> $after (reply: $reply)"
	sleep 2.2
	[ "$(var count)" -gt "$after" ] || fail "the count does not tick"
	ok "ticking: count is now $(var count)"
	[ "$(message reset | jq -r .reply)" = "count=0" ] || fail "reset"
	message inc >/dev/null
	message "add 41" >/dev/null
	[ "$(var count)" -ge 42 ] || fail "inc + add 41 after reset: $(var count)"
	ok "reset, inc, add 41: count $(var count)"
	case "$(message "add x" | jq -r .reply)" in error:*) ;; *) fail "add x accepted" ;; esac
	stop_clean
	local saved
	saved=$(jq -r .count "$state/context.json")
	restart
	[ "$(var count)" -ge "$saved" ] || fail "after restart: count $(var count) < saved $saved"
	ok "restart: saved $saved, now $(var count)"
}

check_watcher_server() {
	local answer
	answer=$(message "hello hershy")
	[ "$(jq -r .reply <<<"$answer")" = "echo: hello hershy" ] || fail "reply: $answer"
	ok "message answered: $answer"
	api "logs?type=effect&limit=10" | jq -e '.effectLogs | map(.Message) | index("echo: hello hershy")' >/dev/null ||
		fail "the echo is not in the effect logs"
	ok "echo in /watcher/logs?type=effect"
	[ "$(var messages)" = 1 ] || fail "messages = $(var messages)"
	for route in signals watching memoCache config "logs" "logs?type=reduce&limit=2"; do
		api "$route" | jq -e 'type == "object"' >/dev/null || fail "/watcher/$route"
	done
	ok "signals, watching, memoCache, config, logs answer JSON"
	stop_clean
	restart
	[ "$(var messages)" = 1 ] || fail "after restart: messages = $(var messages)"
	ok "restart: messages still 1"
}

check_trading_long() {
	local trades position reply step
	[ "$(message pause | jq -r .reply)" = paused ] || fail "pause"
	trades=$(var trades)
	position=$(var position)
	reply=$(message "buy 2" | jq -r .reply)
	[ "$(var trades)" = $((trades + 1)) ] || fail "buy 2: trades $trades -> $(var trades) ($reply)"
	jq -ne --argjson a "$position" --argjson b "$(var position)" '$b == $a + 2' >/dev/null ||
		fail "buy 2: position $position -> $(var position)"
	ok "buy 2: trades $trades -> $(var trades), position $position -> $(var position) (reply: $reply)"
	api "logs?type=effect" | jq -e '.effectLogs | map(.Message) | any(startswith("TRADE #"))' >/dev/null ||
		fail "no TRADE line in the effect logs"
	ok "TRADE line in /watcher/logs?type=effect: $(api 'logs?type=effect' | jq -r '[.effectLogs[].Message | select(startswith("TRADE"))] | last')"
	reply=$(message sell | jq -r .reply)
	[ "$(var position)" = 0 ] || fail "sell: position $(var position) ($reply)"
	ok "sell: position 0, trades $(var trades) (reply: $reply)"
	ok "status: $(message status | jq -r .reply)"
	step=$(var feedStep)
	sleep 2.2
	[ "$(var feedStep)" -gt "$step" ] || fail "the price feed does not move"
	ok "price feed: step $step -> $(var feedStep), lastPrice $(var lastPrice)"
	[ "$(wc -l <"$state/trades.jsonl")" -ge 2 ] || fail "trades.jsonl"
	stop_clean
	trades=$(jq -r .trades "$state/context.json")
	restart
	if [ "$(var trades)" != "$trades" ] || [ "$(var paused)" != true ]; then
		fail "after restart: $(api varState)"
	fi
	ok "restart: trades $(var trades), paused $(var paused), feed resumed at step $(var feedStep)"
	[ "$(message resume | jq -r .reply)" = resumed ] || fail "resume"
}

for example in "${EXAMPLES[@]}"; do
	echo "== $example"
	"./$example/build.sh"
	image="hershy-examples-smoke/$example:$$"
	DOCKER_BUILDKIT=0 docker build -q -t "$image" "./$example" >/dev/null 2>&1 || fail "docker build"
	ok "image $(docker image inspect -f '{{.Size}}' "$image") bytes"
	state=$(mktemp -d)
	port=$(free_port)
	container=$(docker run -d --runtime "$RUNTIME" --read-only --cap-drop ALL \
		--security-opt no-new-privileges --pids-limit 256 --memory 512m \
		-v "$state:/state" -p "127.0.0.1:$port:8080" "$image")
	wait_ready
	ok "status: $(api status)"
	"check_${example//-/_}"
	stop_clean
	cleanup
done
echo "all examples passed"
