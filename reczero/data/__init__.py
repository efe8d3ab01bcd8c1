"""Interaction data: readers for public formats, the synthetic demo set, samples and the DataModule."""
