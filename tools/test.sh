#!/bin/sh
# Install everything the test suite needs, then run all of it (lint, types, tests).
# Run as root on a Debian machine: the kernel tests register with the kernel's audit system.
set -eu
cd "$(dirname "$0")/.."

# Debian's packages the tests compare with or run beside: the C audit tools and plugins,
# laurel (the JSON plugin), nats-server (JetStream) and prometheus (scrapes the metrics).
need_pkgs=""
for tool in auditctl ausearch aureport augenrules; do
    command -v "$tool" >/dev/null 2>&1 || need_pkgs="auditd"
done
[ -x /sbin/audisp-syslog ] || need_pkgs="$need_pkgs audispd-plugins"
command -v laurel >/dev/null 2>&1 || need_pkgs="$need_pkgs laurel"
command -v nats-server >/dev/null 2>&1 || need_pkgs="$need_pkgs nats-server"
command -v prometheus >/dev/null 2>&1 || need_pkgs="$need_pkgs prometheus"
if [ -n "$need_pkgs" ]; then
    # The packages must not start their services: a C auditd would hold the kernel
    # registration, and the others would hold ports the tests choose themselves.
    created_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        created_policy=yes
    fi
    apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need_pkgs >/dev/null
    [ -n "$created_policy" ] && rm -f /usr/sbin/policy-rc.d
fi

# Stop a C auditd that may be running (it holds the registration the kernel tests need).
for pid in $(pidof auditd 2>/dev/null || true); do
    echo "stopping the running C auditd (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
done
for _ in 1 2 3 4 5 6 7 8 9 10; do pidof auditd >/dev/null 2>&1 || break; sleep 0.5; done

python3 -m pip install -q --root-user-action=ignore -e '.[dev]'
python3 -m ruff check src tests tools bench
python3 -m mypy --strict src/auditpy
python3 -m pytest -q -p no:cacheprovider "$@"
