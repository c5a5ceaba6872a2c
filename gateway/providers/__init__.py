"""Provider kinds by name: adding one is a module, a line here and its name in config.ProviderKind.

config.ProviderKind (the `kind` config.toml may name) is the one list of kinds; it lives in config,
which may not import this package. The keys here are typed by it, so a kind config does not know
fails the type check, and build_clients (plus a test) refuses a kind config knows with no adapter.
"""

from collections.abc import Mapping
from typing import Final

from gateway.config import ProviderKind
from gateway.providers.base import ProviderAdapter
from gateway.providers.cohere import CohereAdapter
from gateway.providers.deepinfra import DeepInfraAdapter
from gateway.providers.fireworks import FireworksAdapter
from gateway.providers.tei import TeiAdapter

PROVIDER_KINDS: Final[Mapping[ProviderKind, ProviderAdapter]] = {
    "deepinfra": DeepInfraAdapter(),
    "fireworks": FireworksAdapter(),
    "cohere": CohereAdapter(),
    "tei": TeiAdapter(),
}
