#!/bin/sh
# Keycloak reads its first admin's password only from KC_BOOTSTRAP_ADMIN_PASSWORD.
# This wrapper exports the password init-secrets generated, then runs the command
# it is given (kc.sh), so no password is written in docker-compose.yml.
set -eu
password=$(cat "$BOOTSTRAP_ADMIN_PASSWORD_FILE")
if [ -z "$password" ]; then
  echo "$BOOTSTRAP_ADMIN_PASSWORD_FILE is empty" >&2
  exit 1
fi
unset BOOTSTRAP_ADMIN_PASSWORD_FILE
KC_BOOTSTRAP_ADMIN_PASSWORD=$password
export KC_BOOTSTRAP_ADMIN_PASSWORD
exec "$@"
