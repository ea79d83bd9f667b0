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
