#!/bin/sh
# First start of `docker compose up`: a dev CA and an ECDSA P-256 certificate for
# Envoy and Keycloak (dev/certs.py), and a session key, into the `secrets` volume;
# Keycloak's and Grafana's admin passwords into their own volumes, which only
# Keycloak, respectively Grafana, mount besides this. Later starts keep what is there. Runs in the mcp-demo image
# (Python, cryptography).
set -eu
out=/secrets
umask 077
python /app/certs.py "$out"
if [ ! -f "$out/session-keys.txt" ]; then
  python -c 'import base64, os; print("compose-1:" + base64.b64encode(os.urandom(32)).decode())' > "$out/session-keys.txt"
fi
# Envoy, Keycloak and the sidecars run as other unprivileged users. This volume is
# for a laptop demo; production gets its keys from a secret store.
# The gateway's Keycloak client (token exchange): the realm's dev secret, which
# the realm import sets; a real deployment generates both.
printf '%s\n' mcp-gateway-dev-secret > "$out/keycloak-gateway-secret"
chmod 0444 "$out"/server.pem "$out"/server.key "$out"/ca.pem "$out"/session-keys.txt "$out"/keycloak-gateway-secret
rm -f "$out/ca.key"
admin_password=/keycloak-admin/password
if [ ! -f "$admin_password" ]; then
  python -c 'import secrets; print(secrets.token_urlsafe(24))' > "$admin_password"
fi
# Keycloak runs as uid 1000 in group 0 (root): group-readable is enough.
chmod 0440 "$admin_password"
grafana_password=/grafana-admin/password
if [ ! -f "$grafana_password" ]; then
  python -c 'import secrets; print(secrets.token_urlsafe(24))' > "$grafana_password"
fi
# Grafana runs as uid 472 in group 0 (root): group-readable is enough.
chmod 0440 "$grafana_password"
