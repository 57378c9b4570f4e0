"""A throwaway Samba AD domain controller on a loopback address, for ``make run`` and the tests.

Provisioning a domain takes about five seconds, so the first provisioning (with the Exchange and Lync
schema extensions below already added) is kept as a *template* under ``~/.cache/halo-lifecycle`` and
every later directory is a copy of it (a few hundredths of a second), with the absolute paths and the
listening address in ``etc/smb.conf`` rewritten for its new home. The template also carries the TLS
key Samba generates on its first start, so later starts skip the 4096-bit key generation.

Rules this module keeps, and why:

* Only ``server services = ldap``: Samba's default service set includes a DNS-update task that sends
  traffic to the name servers in resolv.conf, and nothing here needs more than LDAP/LDAPS.
* One 127.0.0.0/8 address per DC, and nothing else: Samba's LDAP ports (389/636/3268/3269) are fixed,
  so a developer's ``make run`` on 127.0.0.1 and the test suite on, say, 127.0.0.7 can only coexist
  by listening on different loopback addresses.
* Never leave a samba running: the child runs in its own process group (Samba signals its whole
  group on SIGTERM, which would otherwise include us), ``stop()`` signals it by PID and reaps it, an
  ``atexit`` hook stops it if the caller forgets, a parent-death signal stops it if we are killed,
  and ``--maximum-runtime`` bounds its life if everything else fails.

Usage::

    python -m lifecycle.local.samba up DIR [--host 127.0.0.1]   # provision + start, print DCInfo JSON
    python -m lifecycle.local.samba provision DIR                # provision only

The package, by what changes together: ``base`` (constants, errors, DCInfo, host helpers), ``schema`` (schema
extensions and smb.conf options), ``directories`` (marker, relocation, copying), ``process`` (the samba child),
``dc`` (SambaDC) and ``cli`` (``python -m lifecycle.local.samba``).
"""

from __future__ import annotations

from lifecycle.local.samba.base import (
    CONSOLE_LOG,
    DC_PORTS,
    FORMAT_VERSION,
    HOST_NAME,
    LDAP_PORT,
    LDAPS_PORT,
    MARKER_FILE,
    PASSWORD_FILE,
    TEMPLATE_MAX_AGE_SECONDS,
    AddressInUseError,
    DCInfo,
    SambaDCError,
    free_loopback_address,
    generate_password,
    release_loopback_address,
    reserve_loopback_address,
    samba_available,
)
from lifecycle.local.samba.cli import main
from lifecycle.local.samba.dc import SambaDC
from lifecycle.local.samba.schema import SCHEMA_ATTRIBUTES, SchemaAttribute

__all__ = [
    "CONSOLE_LOG",
    "DC_PORTS",
    "FORMAT_VERSION",
    "HOST_NAME",
    "LDAPS_PORT",
    "LDAP_PORT",
    "MARKER_FILE",
    "PASSWORD_FILE",
    "SCHEMA_ATTRIBUTES",
    "TEMPLATE_MAX_AGE_SECONDS",
    "AddressInUseError",
    "DCInfo",
    "SambaDC",
    "SambaDCError",
    "SchemaAttribute",
    "free_loopback_address",
    "generate_password",
    "main",
    "release_loopback_address",
    "reserve_loopback_address",
    "samba_available",
]
