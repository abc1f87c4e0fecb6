#!/bin/sh
# Starts redis-server for extauthz: renders the ACL users.acl (next to this
# script) with the password's SHA-256, then runs redis-server with redis.conf,
# that ACL, and the arguments given to this script.
#
#   REDIS_PASSWORD           the extauthz user's password (required, at least
#                            16 characters: openssl rand -base64 32)
#   REDIS_PASSWORD_PREVIOUS  optional: a second password that also works, for
#                            a rotation without downtime (docs/operations.md)
#   REDIS_ACL_FILE           where the rendered ACL goes (default
#                            /run/redis/users.acl; keep it off the data volume)
#   REDIS_ACL_EXTRA          optional: a file of more `user` lines appended to
#                            the ACL (a replication or Sentinel user)
#
# Only hashes reach the rendered file, never a password.
#
# The default user is on, but its hash (#NO_PASSWORD_MATCHES) is replaced by
# 32 random bytes: no password is known to match it, so nobody can log in as
# it. It is not simply off because Redis replays the transactions in the
# append-only file (which is how Lua scripts' writes are logged) as the
# default user and checks its ACL as it does (redis/redis#14541, fixed after
# 7.4): with the default user off, every key a script wrote would be lost
# silently on restart. So it may write extauthz:* keys, and nothing more.
set -eu

here=$(dirname "$0")
acl=${REDIS_ACL_FILE:-/run/redis/users.acl}

fail() {
	echo "start.sh: $*" >&2
	exit 1
}

sha256() {
	printf '%s' "$1" | sha256sum | cut -c1-64
}

[ -n "${REDIS_PASSWORD:-}" ] || fail "REDIS_PASSWORD is not set: the extauthz user needs a password"
[ "${#REDIS_PASSWORD}" -ge 16 ] || fail "REDIS_PASSWORD is shorter than 16 characters (use e.g. openssl rand -base64 32)"
# docker-compose.yml's default, for the demo: it starts, but says so.
[ "$REDIS_PASSWORD" != "demo-only-redis-password" ] ||
	echo "start.sh: warning: REDIS_PASSWORD is the demo default written in docker-compose.yml, which anyone can read: set a random one (openssl rand -base64 32)" >&2
hashes="#$(sha256 "$REDIS_PASSWORD")"
if [ -n "${REDIS_PASSWORD_PREVIOUS:-}" ]; then
	[ "${#REDIS_PASSWORD_PREVIOUS}" -ge 16 ] || fail "REDIS_PASSWORD_PREVIOUS is shorter than 16 characters"
	hashes="$hashes #$(sha256 "$REDIS_PASSWORD_PREVIOUS")"
fi
for placeholder in '#EXTAUTHZ_PASSWORD_SHA256' '#NO_PASSWORD_MATCHES'; do
	[ "$(grep -c "$placeholder" "$here/users.acl")" = 1 ] || fail "$here/users.acl must hold $placeholder exactly once"
done
unknowable="#$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')"

umask 077
{
	sed -e "s/#EXTAUTHZ_PASSWORD_SHA256/$hashes/" -e "s/#NO_PASSWORD_MATCHES/$unknowable/" "$here/users.acl"
	if [ -n "${REDIS_ACL_EXTRA:-}" ]; then
		cat "$REDIS_ACL_EXTRA"
	fi
} >"$acl.tmp"
mv "$acl.tmp" "$acl"

unset REDIS_PASSWORD REDIS_PASSWORD_PREVIOUS
exec redis-server "$here/redis.conf" --aclfile "$acl" "$@"
