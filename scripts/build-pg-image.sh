#!/usr/bin/env bash
# Builds the PostgreSQL test image from Debian's packages, for machines with no container
# registry: debootstrap a minimal Debian into a folder, add PostgreSQL and an entrypoint that
# behaves like the official image's (POSTGRES_USER/PASSWORD/DB, extra args go to `postgres`),
# then `docker import` it. Skips everything when the image already exists.
set -euo pipefail

IMAGE="${PQ_TEST_PG_IMAGE:-pq-postgres:15}"
SUITE="${PQ_PG_SUITE:-bookworm}"
PG_MAJOR="${PQ_PG_MAJOR:-15}"

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "build-pg-image: $IMAGE exists, nothing to do"
  exit 0
fi

# The mirror is whatever this machine's apt is configured with: deb822 sources first, then the
# one-line format. Never a hard-coded host.
mirror=""
for f in /etc/apt/sources.list.d/*.sources; do
  [ -e "$f" ] || continue
  mirror=$(awk '/^URIs:/ {print $2; exit}' "$f")
  [ -n "$mirror" ] && break
done
if [ -z "$mirror" ] && [ -e /etc/apt/sources.list ]; then
  mirror=$(awk '$1 == "deb" && $0 !~ /security/ {for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}' /etc/apt/sources.list)
fi
if [ -z "$mirror" ]; then
  echo "build-pg-image: no Debian mirror found in the apt sources" >&2
  exit 1
fi

if ! command -v debootstrap >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi

root=$(mktemp -d /tmp/pq-pg-rootfs.XXXXXX)
trap 'rm -rf "$root"' EXIT

echo "build-pg-image: debootstrap $SUITE from $mirror"
debootstrap --variant=minbase --include="postgresql-$PG_MAJOR" "$SUITE" "$root" "$mirror" >/tmp/pq-debootstrap.log 2>&1 || {
  tail -n 30 /tmp/pq-debootstrap.log >&2
  exit 1
}

cat >"$root/usr/local/bin/pq-entrypoint" <<ENTRY
#!/bin/bash
set -euo pipefail
PGBIN=/usr/lib/postgresql/$PG_MAJOR/bin
PGDATA=/var/lib/postgresql/data
user="\${POSTGRES_USER:-postgres}"
db="\${POSTGRES_DB:-\$user}"
if [ ! -s "\$PGDATA/PG_VERSION" ]; then
  mkdir -p "\$PGDATA" /var/run/postgresql
  chown -R postgres:postgres "\$PGDATA" /var/run/postgresql
  pwfile=\$(mktemp)
  printf '%s' "\${POSTGRES_PASSWORD:-postgres}" >"\$pwfile"
  chown postgres "\$pwfile"
  runuser -u postgres -- "\$PGBIN/initdb" -D "\$PGDATA" -U "\$user" --pwfile="\$pwfile" \
    --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 >/dev/null
  rm -f "\$pwfile"
  echo "host all all all scram-sha-256" >>"\$PGDATA/pg_hba.conf"
  if [ "\$db" != "postgres" ]; then
    runuser -u postgres -- "\$PGBIN/postgres" --single -D "\$PGDATA" postgres <<<"CREATE DATABASE \"\$db\" OWNER \"\$user\";" >/dev/null
  fi
  echo "PostgreSQL init process complete; ready for start up."
fi
if [ "\${1:-}" = "postgres" ]; then shift; fi
exec runuser -u postgres -- "\$PGBIN/postgres" -D "\$PGDATA" -c listen_addresses='*' "\$@"
ENTRY
chmod +x "$root/usr/local/bin/pq-entrypoint"
# Keep the image small: package caches and docs are not needed to run a server.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/usr/share/doc "$root"/usr/share/man "$root"/var/lib/apt/lists/*

tar -C "$root" -c . | docker import \
  --change 'ENTRYPOINT ["/usr/local/bin/pq-entrypoint"]' \
  --change 'CMD ["postgres"]' \
  --change 'EXPOSE 5432' \
  - "$IMAGE" >/dev/null
echo "build-pg-image: built $IMAGE"
