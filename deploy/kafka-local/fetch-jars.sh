#!/usr/bin/env bash
# Fetch the jars of a real Apache Kafka broker into a cache directory outside the
# repository and print that directory on stdout (and nothing else on stdout).
#
# Why: the test suite (tests/support/kafka_local.py) runs a genuine KRaft broker
# with `java -cp '<libs>/*'`, without Docker or a distribution tarball. Maven is
# only run when the cache lacks a complete copy for the current pom.xml, so this
# is cheap to call before every test run (make test calls it).
#
# Environment overrides:
#   TFSTREAM_KAFKA_VERSION  broker version (default: kafka.version in pom.xml)
#   TFSTREAM_KAFKA_LIBS     jar directory (default: ~/.cache/tfstream/kafka-<version>/libs)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
pom="$here/pom.xml"

pom_version() {
  # The single source of truth for the version is the pom property.
  sed -n 's:.*<kafka\.version>\(.*\)</kafka\.version>.*:\1:p' "$pom" | head -n 1
}

version="${TFSTREAM_KAFKA_VERSION:-$(pom_version)}"
if [[ -z "$version" ]]; then
  echo "fetch-jars.sh: cannot read <kafka.version> from $pom" >&2
  exit 1
fi
libs="${TFSTREAM_KAFKA_LIBS:-${XDG_CACHE_HOME:-$HOME/.cache}/tfstream/kafka-$version/libs}"
marker="$libs/.tfstream-complete"

# The marker records what was fetched (version + pom checksum), so editing the pom
# (e.g. bumping log4j) refreshes the cache instead of silently reusing stale jars.
stamp="$version $(sha256sum "$pom" | cut -d' ' -f1)"

if [[ -f "$marker" && "$(cat "$marker")" == "$stamp" ]]; then
  echo "$libs"
  exit 0
fi

if ! command -v mvn >/dev/null 2>&1; then
  echo "fetch-jars.sh: Maven (mvn) is required to fetch Kafka $version jars into $libs" >&2
  exit 1
fi

echo "fetch-jars.sh: fetching Kafka $version jars into $libs" >&2
# Drop previously fetched jars first: copy-dependencies never deletes, and two
# versions of one library on a wildcard classpath load in arbitrary order. Only
# jars are removed, in case TFSTREAM_KAFKA_LIBS points somewhere shared.
mkdir -p "$libs"
rm -f "$libs"/*.jar "$marker"
# Debian's Maven 3.8 prints bare ANSI resets even in quiet batch mode: strip them.
mvn -q -B -f "$pom" package -Dkafka.version="$version" -Dkafka.libs.dir="$libs" 2>&1 \
  | sed -e 's/\x1b\[[0-9;]*m//g' -e '/^[[:space:]]*$/d' >&2

if ! compgen -G "$libs/kafka_2.13-*.jar" >/dev/null; then
  echo "fetch-jars.sh: Maven finished but no kafka_2.13 jar is in $libs" >&2
  exit 1
fi
printf '%s\n' "$stamp" >"$marker"
echo "$libs"
