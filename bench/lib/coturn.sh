# Sourced by the TURN benchmarks: the one coturn relay configuration they
# give turnserver.
#
# coturn_relay_conf DIR PORT [TLS_LINES]: writes DIR/coturn.conf, a
# listener on 127.0.0.1:PORT relaying from ports 52000-52999, user
# bench:bench in realm bench, loopback peers allowed; TLS_LINES (cert=,
# pkey=, tls-listening-port=) turn TLS on, else no-tls.
coturn_relay_conf() {
  local dir=$1 port=$2 tls=${3:-no-tls}
  cat > "$dir/coturn.conf" <<CONF
listening-ip=127.0.0.1
relay-ip=127.0.0.1
listening-port=$port
min-port=52000
max-port=52999
lt-cred-mech
user=bench:bench
realm=bench
fingerprint
$tls
no-dtls
allow-loopback-peers
no-cli
pidfile=$dir/coturn.pid
log-file=$dir/coturn.log
simple-log
CONF
}
