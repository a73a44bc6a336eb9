-- Versioned configuration (hxp.lifecycle): every catalogue applied, what the gateways serve now, and each step
-- of a change (apply, reload, engine update, rollback).
CREATE TABLE IF NOT EXISTS config_versions (
    version INTEGER PRIMARY KEY,
    sha256 VARCHAR(64) NOT NULL,
    applied_at TIMESTAMP WITH TIME ZONE NOT NULL,
    author TEXT NOT NULL,
    action TEXT NOT NULL,
    catalogue TEXT NOT NULL,
    diff TEXT NOT NULL
);
-- One row (id 1): the version the gateways serve, the backends that override their start-up ones and the standby
-- backends used while those fail (an old engine during a rolling update); every change bumps the generation,
-- which each gateway worker polls.
CREATE TABLE IF NOT EXISTS config_live (
    id INTEGER PRIMARY KEY,
    generation INTEGER NOT NULL,
    version INTEGER NOT NULL,
    backends TEXT NOT NULL,
    standby TEXT NOT NULL,
    updated_at TIMESTAMP WITH TIME ZONE NOT NULL
);
CREATE TABLE IF NOT EXISTS config_events (
    id INTEGER PRIMARY KEY,
    at TIMESTAMP WITH TIME ZONE NOT NULL,
    version INTEGER NOT NULL,
    subject TEXT NOT NULL,
    step TEXT NOT NULL,
    detail TEXT NOT NULL
);
