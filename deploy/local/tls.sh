#!/usr/bin/env bash
# A local certificate authority and a server certificate for loopback (127.0.0.1 and
# localhost), for the https listener of the reference-compatible device API.
#   tls.sh DIR   writes DIR/ca.pem, DIR/ca.key, DIR/server.pem, DIR/server.key (once)
# A device trusts DIR/ca.pem. Safe to run twice: existing files are kept while valid.
set -euo pipefail
dir=${1:?usage: tls.sh DIR}
mkdir -p "$dir"
cd "$dir"
command -v openssl >/dev/null || { echo "fleetreg tls: openssl not found (apt-get install openssl)" >&2; exit 1; }
if [ -f server.pem ] && openssl x509 -checkend 86400 -noout -in server.pem >/dev/null 2>&1; then
  exit 0
fi
umask 077
openssl req -x509 -newkey rsa:2048 -nodes -days 825 -subj "/CN=fleetreg local CA" \
  -keyout ca.key -out ca.pem >/dev/null 2>&1
openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout server.key -out server.csr >/dev/null 2>&1
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' > server.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 825 \
  -extfile server.ext -out server.pem >/dev/null 2>&1
rm -f server.csr server.ext ca.srl
chmod 644 ca.pem server.pem
