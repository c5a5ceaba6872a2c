"""Schemathesis against the gateway's own /openapi.json: generated requests, every answer checked.

The gateway runs as a real process in front of the emulator; every operation in the document
gets a bounded number of generated requests (positive and negative), and every answer must fit
the documented status codes, headers and bodies, with no 5xx.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from gateway.web.openapi import openapi_spec
from tests.support.config import gateway_config, local_url, write_config
from tests.support.processes import free_port, running

pytestmark = [pytest.mark.processes, pytest.mark.slow]

CONFIG = schemathesis.Config.from_dict({
    # Unknown headers are not invalid requests: every HTTP server ignores them, by RFC 9110.
    "generation": {"allow-extra-parameters": False},
    # 502 and 504 are documented answers (all providers failed; a deadline as short as
    # `X-Request-Timeout: 5e-324` ran out); a 500 never is.
    "checks": {"not_a_server_error": {"expected-statuses": ["2XX", "3XX", "4XX", "502", "504"]}},
    "operations": [{
        # "As many queries as documents" compares two lengths, which JSON Schema cannot say: such
        # bodies fit the schema and get a 422 that names the rule (tests/test_bad_input.py).
        "include-path": "/v1/inference/{model}",
        "checks": {"positive_data_acceptance": {"enabled": False}},
    }, {
        "include-path": "/inference/{model}",  # the same operation at DeepInfra's root path
        "checks": {"positive_data_acceptance": {"enabled": False}},
    }],
})
# The document the gateway serves; the fixture below checks that it is this one.
schema = schemathesis.openapi.from_dict(openapi_spec(), config=CONFIG)


@pytest.fixture(scope="module")
def gateway_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    emulator_port, gateway_port = free_port(), free_port()
    config = tmp_path_factory.mktemp("schemathesis") / "config.toml"
    write_config(config, gateway_config(local_url(emulator_port), server={
        "admin_key_env": "TEST_ADMIN_KEY", "log_level": "warning",
        # Fuzzed admin calls carry wrong keys by the hundred: waits growing to 5 s would take minutes.
        "admin_wrong_key_max_delay_seconds": 0}))
    env = {"EMULATOR_KEY": "k", "TEST_ADMIN_KEY": "admin-key"}
    with running(["emulate", "--port", str(emulator_port)], emulator_port), \
         running(["serve", "--config", str(config), "--port", str(gateway_port)], gateway_port, env=env):
        url = f"http://127.0.0.1:{gateway_port}"
        with urllib.request.urlopen(f"{url}/openapi.json", timeout=5) as answer:
            assert json.loads(answer.read()) == openapi_spec()
        yield url


@schema.parametrize()
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_fits_the_document(case: schemathesis.Case, gateway_url: str) -> None:
    case.call_and_validate(base_url=gateway_url)
