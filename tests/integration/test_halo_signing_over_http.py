"""Every signing option over HTTP and through the worker to the real DC: accepted only with matching settings."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from lifecycle.halo.auth import Algorithm, Encoding, sign_body
from lifecycle.local.samba import DCInfo
from lifecycle.local.server import LocalHost
from lifecycle.mapping.schema import Mapping
from lifecycle.runtime import Runtime
from tests.integration.conftest import World, dc_settings, delivery, new_user
from tests.integration.test_local_service import wait_until

pytestmark = pytest.mark.integration
SECRET = "hmac-secret-value"
ALGORITHMS: tuple[Algorithm, ...] = ("sha1", "sha256", "sha512")
ENCODINGS: tuple[Encoding, ...] = ("base64", "hex")
PREFIXES = ("", "sha256=")


def test_a_body_signed_with_each_option_is_applied_only_with_matching_settings(
    directory: DCInfo, example_mapping: Mapping, world: World, tmp_path: Path
) -> None:
    combos = list(itertools.product(ALGORITHMS, ENCODINGS, PREFIXES))
    created = []
    for number, (algorithm, encoding, prefix) in enumerate(combos):
        settings = dc_settings(
            directory,
            tmp_path / f"host-{number}",
            webhook_basic_user="",
            webhook_hmac_header="X-Halo-Signature",
            webhook_hmac_algorithm=algorithm,
            webhook_hmac_encoding=encoding,
            webhook_hmac_prefix=prefix,
        )
        runtime = Runtime(settings, mapping=example_mapping)
        host = LocalHost(runtime, host="127.0.0.1", port=0, workers=1)
        host.start()
        try:
            user = new_user("Signed", f"{algorithm.title()}{encoding.title()}{number}")
            at = datetime.now(UTC).replace(tzinfo=None).isoformat(timespec="seconds")
            raw = json.dumps(delivery("created", user, at=at)).encode()
            url = f"{host.url}/api/halo/events"
            for other in combos:
                if other == (algorithm, encoding, prefix):
                    continue
                token = sign_body(SECRET, raw, algorithm=other[0], encoding=other[1], prefix=other[2])
                response = httpx.post(url, content=raw, headers={"X-Halo-Signature": token}, timeout=30)
                assert response.status_code == 401, (algorithm, encoding, prefix, other)
            token = sign_body(SECRET, raw, algorithm=algorithm, encoding=encoding, prefix=prefix)
            response = httpx.post(url, content=raw, headers={"X-Halo-Signature": token}, timeout=30)
            assert response.status_code == 202, (algorithm, encoding, prefix, response.text)
            wait_until(
                lambda uid=user["id"]: world.account(uid) is not None,  # type: ignore[misc]
                what=f"the joiner signed {algorithm}/{encoding}",
            )
            created.append(user["id"])
        finally:
            host.stop()
            runtime.close()
    assert len(created) == len(combos)
