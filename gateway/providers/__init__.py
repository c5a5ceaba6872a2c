"""Provider kinds by name: adding one is a module and a line here."""

from gateway.providers.base import ProviderAdapter
from gateway.providers.cohere import CohereAdapter
from gateway.providers.deepinfra import DeepInfraAdapter
from gateway.providers.fireworks import FireworksAdapter
from gateway.providers.tei import TeiAdapter

PROVIDER_KINDS: dict[str, ProviderAdapter] = {
    "deepinfra": DeepInfraAdapter(),
    "fireworks": FireworksAdapter(),
    "cohere": CohereAdapter(),
    "tei": TeiAdapter(),
}
