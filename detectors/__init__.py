"""Shoal detectors: indicator index, vectorised matchers, behavioural detectors, confirmation."""
