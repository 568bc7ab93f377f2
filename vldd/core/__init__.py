"""Plumbing every job uses: run directories (locks, atomic writes, manifests), devices, seeding, provenance."""
