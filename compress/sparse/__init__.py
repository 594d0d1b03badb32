"""Unstructured masks: criteria and schedules."""
