#!/bin/sh
# A private certificate authority and the broker's TLS certificate for the devices' listener (8883).
#
#   deploy/mosquitto/make-certs.sh HOST [HOST...]     e.g. make-certs.sh werkbank.lab 192.168.10.5
#
# HOST: every name and address the Pis use to reach the broker (it must match their mqtts:// URL).
# Writes into $CERT_DIR (default: deploy/mosquitto/certs): ca.crt (to the Pis, via the provisioning
# bundle, and to MQTT_CA_FILE), ca.key (keep it off the broker; it signs the next certificate),
# server.crt and server.key (the broker's). An existing CA is reused, so a renewed server
# certificate needs no change on the Pis. Run it again before server.crt expires (825 days).
set -eu
[ $# -ge 1 ] || { echo "usage: $0 HOST [HOST...] (the names/addresses the Pis connect to)" >&2; exit 2; }
dir=${CERT_DIR:-$(dirname "$0")/certs}
mkdir -p "$dir"
cd "$dir"
san=""
for host in "$@"; do
    case $host in
        *:*) kind=IP ;;  # IPv6
        *[!0-9.]*) kind=DNS ;;
        *) kind=IP ;;  # IPv4
    esac
    san="${san:+$san,}$kind:$host"
done
umask 077  # the keys
if [ ! -f ca.key ]; then
    openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -sha256 \
        -keyout ca.key -out ca.crt -days 3650 -subj "/CN=Werkbank broker CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
fi
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -sha256 \
    -keyout server.key -out server.csr -subj "/CN=$1"
printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\n' "$san" > server.ext
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -sha256 -days 825 \
    -extfile server.ext -out server.crt 2>/dev/null
rm -f server.csr server.ext
chmod 644 ca.crt server.crt
echo "made $dir/server.crt for $san, signed by $dir/ca.crt"
