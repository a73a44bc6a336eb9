"""The audit trail: every administrative action and refusal recorded, tamper-evident, searchable.

A room of the ground floor's level: it imports only :mod:`hxp.core`; the gateway records its events through it
(:mod:`hxp.gateway.audited`), the console shows them (:mod:`hxp.console.audit`), operators verify and search
them (``hxp audit``). The chain: :mod:`hxp.audit.trail`; search: :mod:`hxp.audit.search`; the command
line's own events: :mod:`hxp.audit.operator`.
"""
