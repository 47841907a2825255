"""Measuring an erasure: detectors, metrics, prompt suites."""
