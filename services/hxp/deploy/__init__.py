"""Deployment artefacts derived from the catalogue: compose files, systemd units, env files, backups."""
