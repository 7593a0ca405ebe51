"""Deciding from a run table and fitted laws: the shape space, recommendation, throughput models,
substitution (sampling for parameters), reports, the demo and exports of recommendations.

Uses ``archscale.search``'s run table and ``archscale.laws``; ``search`` imports nothing from here.
"""
