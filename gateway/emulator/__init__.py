"""The emulator: local stand-ins for the providers' public rerank APIs, with fault injection.

    scores   word-overlap scores standing in for a model, and the quietly wrong variants
    wire     each provider's wire format: decode a call, encode an answer, body-shaped faults
    app      the aiohttp app: fault rules and the /_emulator control API

May import: nothing of the gateway's. It stands in for the providers, so it shares no code with
what it is tested against.
"""

from gateway.emulator.app import (
    EMULATOR_STATE,
    FAULT_MODE_HELP,
    FAULT_MODES,
    MAX_BODY_BYTES,
    PROVIDERS,
    EmulatorConfig,
    EmulatorState,
    FaultRule,
    create_emulator_app,
)
from gateway.emulator.scores import QUIET_FAULT_MODES, emulated_logit, emulated_score, misbehaving_score

__all__ = [
    "EMULATOR_STATE",
    "FAULT_MODES",
    "FAULT_MODE_HELP",
    "MAX_BODY_BYTES",
    "PROVIDERS",
    "QUIET_FAULT_MODES",
    "EmulatorConfig",
    "EmulatorState",
    "FaultRule",
    "create_emulator_app",
    "emulated_logit",
    "emulated_score",
    "misbehaving_score",
]
