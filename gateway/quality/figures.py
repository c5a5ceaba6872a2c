"""A model's quality figures in /metrics: verdicts, agreement and calibration per provider."""

from __future__ import annotations

from gateway.quality.parts import Parts


def publish_quality(parts: Parts, model: str) -> None:
    metrics = parts.metrics
    for provider in parts.config.models[model].fallback:
        entry = parts.board.entry(model, provider)
        if entry.state != "unknown":
            metrics.set_provider_quality(model=model, provider=provider, passing=entry.state == "passing")
        for language, found in entry.languages.items():
            metrics.set_provider_language_quality(model=model, provider=provider, language=language,
                                                  passing=found.state == "passing")
        measured = entry.agreement.current()
        if measured is not None:
            metrics.set_provider_agreement(model=model, provider=provider, measure="mae", value=measured.mae)
            if measured.kendall_tau is not None:
                metrics.set_provider_agreement(
                    model=model, provider=provider, measure="kendall_tau", value=measured.kendall_tau
                )
        calibration = entry.agreement.calibration()
        if calibration is not None:
            metrics.set_provider_agreement(
                model=model, provider=provider, measure="mae_calibrated", value=calibration.mae_after
            )
            metrics.set_provider_agreement(
                model=model, provider=provider, measure="calibration_pairs", value=calibration.pairs
            )
