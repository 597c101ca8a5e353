-- The first central schema: the three tables the contract names, with the GIN index
-- that serves "every group holding a device". IF NOT EXISTS throughout so a centre
-- made by an earlier build (same tables, no version row) upgrades cleanly.
CREATE TABLE IF NOT EXISTS fleetgroups.gateways (
    gateway_id text PRIMARY KEY,
    store_id text NOT NULL,
    applied_seq bigint NOT NULL,
    applied_at timestamptz NOT NULL);

CREATE TABLE IF NOT EXISTS fleetgroups.groups (
    gateway_id text NOT NULL,
    account text NOT NULL,
    id text NOT NULL,
    name text NOT NULL,
    description text,
    devices text[] NOT NULL,
    creation timestamptz NOT NULL,
    last_modified timestamptz NOT NULL,
    revision bigint,
    PRIMARY KEY (gateway_id, account, id));

CREATE INDEX IF NOT EXISTS groups_devices_gin
    ON fleetgroups.groups USING gin (devices);

CREATE TABLE IF NOT EXISTS fleetgroups.changes (
    gateway_id text NOT NULL,
    store_id text NOT NULL,
    seq bigint NOT NULL,
    time timestamptz NOT NULL,
    op text NOT NULL,
    account text NOT NULL,
    id text NOT NULL,
    user_name text NOT NULL,
    PRIMARY KEY (gateway_id, store_id, seq));
