-- A fleet the office can see and keep: heartbeat columns on gateways, the status view,
-- the "who changed this group" and retention indexes, the maintenance ledger that lets
-- one gateway at a time prune old changes, and the lifecycle functions (decommission,
-- rename). README "Many gateways" documents each of them.

-- Written by every heartbeat and every batch: when the gateway was last seen, its own
-- head seq (so lag = head_seq - applied_seq), its build, and how often it reports
-- (the status view's staleness threshold).
ALTER TABLE fleetgroups.gateways
    ADD COLUMN IF NOT EXISTS last_seen_at timestamptz,
    ADD COLUMN IF NOT EXISTS head_seq bigint,
    ADD COLUMN IF NOT EXISTS version text,
    ADD COLUMN IF NOT EXISTS revision text,
    ADD COLUMN IF NOT EXISTS heartbeat_secs integer;

-- "Who changed grp-7 on site-042": an index scan in seq order, not every change of the
-- gateway.
CREATE INDEX IF NOT EXISTS changes_group
    ON fleetgroups.changes (gateway_id, account, id, seq);

-- Retention deletes the oldest changes in small batches.
CREATE INDEX IF NOT EXISTS changes_time ON fleetgroups.changes (time);

-- When a fleet-wide job last ran (retention of changes): one gateway runs it per
-- period, under an advisory lock, whatever the fleet's size.
CREATE TABLE IF NOT EXISTS fleetgroups.maintenance (
    job text PRIMARY KEY,
    last_run timestamptz NOT NULL);

-- One row per gateway: how long ago it was seen, how many of its changes the centre
-- lacks, and whether it missed three heartbeats (stale: down, cut off, or refused).
CREATE OR REPLACE VIEW fleetgroups.gateway_status AS
SELECT gateway_id,
       now() - coalesce(last_seen_at, applied_at) AS seen_ago,
       greatest(coalesce(head_seq, applied_seq) - applied_seq, 0) AS behind,
       coalesce(last_seen_at, applied_at)
           < now() - make_interval(secs => 3 * coalesce(heartbeat_secs, 60)) AS stale,
       applied_seq,
       head_seq,
       last_seen_at,
       applied_at,
       store_id,
       version,
       revision
  FROM fleetgroups.gateways;

-- Removes a gateway from the centre: its groups and its row; its audit trail (changes)
-- too unless keep_audit. Stop the gateway (or clear its [replication]) first: a
-- running gateway simply streams itself back in, which is the "return" path.
CREATE OR REPLACE FUNCTION fleetgroups.decommission(p_gateway_id text, keep_audit boolean DEFAULT true)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM fleetgroups.groups WHERE gateway_id = p_gateway_id;
    DELETE FROM fleetgroups.gateways WHERE gateway_id = p_gateway_id;
    IF NOT keep_audit THEN
        DELETE FROM fleetgroups.changes WHERE gateway_id = p_gateway_id;
    END IF;
END $$;

-- Renames a gateway centrally: afterwards nothing is left under old_id. When new_id has
-- no row yet, the old rows move (the gateway restarted as new_id continues where it
-- was, no resync); when the gateway already streamed itself in as new_id, the old
-- rows are dropped. The audit trail moves to new_id either way, without duplicates.
CREATE OR REPLACE FUNCTION fleetgroups.rename_gateway(old_id text, new_id text)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF old_id = new_id THEN
        RETURN;
    END IF;
    PERFORM 1 FROM fleetgroups.gateways WHERE gateway_id IN (old_id, new_id) FOR UPDATE;
    IF EXISTS (SELECT 1 FROM fleetgroups.gateways WHERE gateway_id = new_id) THEN
        DELETE FROM fleetgroups.groups WHERE gateway_id = old_id;
        DELETE FROM fleetgroups.gateways WHERE gateway_id = old_id;
    ELSE
        UPDATE fleetgroups.gateways SET gateway_id = new_id WHERE gateway_id = old_id;
        UPDATE fleetgroups.groups SET gateway_id = new_id WHERE gateway_id = old_id;
    END IF;
    INSERT INTO fleetgroups.changes
        SELECT new_id, store_id, seq, time, op, account, id, user_name
          FROM fleetgroups.changes WHERE gateway_id = old_id
        ON CONFLICT DO NOTHING;
    DELETE FROM fleetgroups.changes WHERE gateway_id = old_id;
END $$;
