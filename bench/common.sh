# What the benchmark scripts share; sourced by them, not run.

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Waits until each of the given loopback ports accepts connections (10 s each at most).
wait_for_ports() {
  local port
  for port in "$@"; do
    for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
  done
}

# `flywheel_config PORT DATA_DIR PROVIDER BASE_URL`: the config every
# benchmark runs Flywheel with — anonymous clients, no rate limit, the
# `triage` alias on one version, `gpt-4o-mini` at the provider — on
# standard output; a script appends what its run changes.
flywheel_config() {
  cat <<TOML
[server]
listen = "127.0.0.1:$1"
data_dir = "$2"
[auth]
allow_anonymous_clients = true
[limits]
requests_per_minute = 0
[[providers]]
name = "$3"
base_url = "$4"
[[models]]
name = "triage"
model_type = "threat_detection"
  [[models.versions]]
  name = "base"
  provider = "$3"
  model = "gpt-4o-mini"
TOML
}

# `static_upstream_conf DIR PORT`: the config of an nginx that answers
# every request on PORT with bench/upstream-answer.json, the static
# upstream the proxies are measured against; its files go in DIR.
static_upstream_conf() {
  # nginx reads `\n` in a quoted string as a newline, which would put raw
  # newlines inside the answer's JSON strings: every backslash is doubled
  # so the answer arrives as the valid JSON a provider sends.
  local answer
  answer=$(tr -d '\n' < bench/upstream-answer.json | sed 's/\\/\\\\/g')
  cat <<CONF
worker_processes 1;
daemon off;
pid $1/upstream.pid;
error_log $1/upstream-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $1/upstream-body;
    server {
        listen 127.0.0.1:$2;
        keepalive_requests 1000000;
        client_body_buffer_size 64k;
        location / {
            default_type application/json;
            return 200 '$answer';
        }
    }
}
CONF
}

# `wrk_post_lua ROOT`: a wrk script that POSTs bench/request.json as JSON;
# a caller may append functions to it.
wrk_post_lua() {
  cat <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open("$1/bench/request.json")
wrk.body = f:read("*a")
f:close()
LUA
}

# Installs wrk and nginx (Debian's packages) when they are missing.
need_wrk_and_nginx() {
  local tool
  for tool in wrk nginx; do
    command -v $tool >/dev/null || { apt-get update -q && apt-get install -y -q wrk nginx-light; }
  done
}

# `flywheel_binary ROOT`: the binary to measure, on standard output:
# $FLYWHEEL_BIN when set (to compare builds), else a release build of ROOT.
flywheel_binary() {
  if [ -n "${FLYWHEEL_BIN:-}" ]; then
    echo "$FLYWHEEL_BIN"
  else
    (cd "$1" && cargo build --release --bin flywheel -q >&2)
    echo "$1/target/release/flywheel"
  fi
}

# `capture_mode DEFAULT`: $CAPTURE, or DEFAULT when it is unset, on
# standard output; fails unless it is `on` or `off`.
capture_mode() {
  local mode=${CAPTURE:-$1}
  case $mode in
    on|off) echo "$mode" ;;
    *) echo "CAPTURE must be on or off" >&2; return 2 ;;
  esac
}

# `capture_config MODE`: what a run's config appends for CAPTURE=MODE.
capture_config() {
  if [ "$1" = off ]; then printf '[capture]\nenabled = false\n'; fi
}

# `bench_tool ROOT NAME`: the crate bench/NAME (`floor`, `loadgen`)
# built for release, its binary's path on standard output.
bench_tool() {
  (cd "$1/bench/$2" && cargo build --release -q >&2)
  echo "$1/bench/$2/target/release/$2"
}

# `reverse_proxy_conf DIR PORT UPSTREAM_PORT [WORKERS]`: bench/nginx.conf,
# nginx as a keep-alive reverse proxy on PORT in front of UPSTREAM_PORT,
# with WORKERS worker processes (1 unless given); its files go in DIR.
reverse_proxy_conf() {
  sed -e "s#__DIR__#$1#g" -e "s#__PORT__#$2#" -e "s#__UPSTREAM_PORT__#$3#" \
    -e "s#^worker_processes 1;#worker_processes ${4:-1};#" bench/nginx.conf
}
