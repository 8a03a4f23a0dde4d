-- Creates the schema and the migrations table if missing (one simple-protocol batch).
CREATE SCHEMA IF NOT EXISTS {schema};
CREATE TABLE IF NOT EXISTS {migrations} (version integer PRIMARY KEY,
  description text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now());
