-- Office groups (docs/operations/many-gateways.md, "Office groups"): defined once centrally with plain SQL,
-- pulled by every gateway they target. The office writes only office_groups; these
-- triggers keep a revision per change, remember every gateway a group ever targeted,
-- and turn a DELETE into a tombstone, so INSERT, UPDATE and DELETE are all a gateway
-- needs.

-- Every change gets the next revision. Writers serialise on one advisory lock taken
-- before the revision is drawn, so revisions are handed out in commit order and a
-- pull that has seen revision r has seen every change below it.
CREATE SEQUENCE IF NOT EXISTS fleetgroups.office_revision;
-- The default numbers of new office groups: ofc-1, ofc-2, ...
CREATE SEQUENCE IF NOT EXISTS fleetgroups.office_group_number;

CREATE TABLE IF NOT EXISTS fleetgroups.office_groups (
    account text NOT NULL,
    id text NOT NULL DEFAULT 'ofc-' || nextval('fleetgroups.office_group_number'),
    name text NOT NULL,
    description text,
    devices text[] NOT NULL DEFAULT '{}',
    -- NULL: every gateway; else the gateway_ids that serve it.
    gateways text[],
    -- Set by the trigger, whatever the writer says.
    revision bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now(),
    -- Every gateway it ever targeted (NULL: once every gateway), so a gateway dropped
    -- from gateways still learns that it must remove it.
    ever_gateways text[],
    PRIMARY KEY (account, id),
    CONSTRAINT office_groups_id CHECK (
        id ~ '^ofc-[1-9][0-9]{0,18}$' AND substr(id, 5)::numeric <= 9223372036854775807),
    CONSTRAINT office_groups_account CHECK (
        char_length(account) BETWEEN 1 AND 64 AND account !~ '[[:cntrl:]]'),
    CONSTRAINT office_groups_name CHECK (
        name = btrim(name) AND char_length(name) BETWEEN 1 AND 128 AND name !~ '[[:cntrl:]]'),
    CONSTRAINT office_groups_description CHECK (
        description IS NULL OR (char_length(description) <= 1024
            AND description !~ '[\x01-\x08\x0b\x0c\x0e-\x1f\x7f]')),
    CONSTRAINT office_groups_devices CHECK (
        cardinality(devices) <= 100000 AND array_position(devices, NULL) IS NULL),
    CONSTRAINT office_groups_gateways CHECK (
        gateways IS NULL OR array_position(gateways, NULL) IS NULL)
);
CREATE INDEX IF NOT EXISTS office_groups_revision ON fleetgroups.office_groups (revision);
CREATE UNIQUE INDEX IF NOT EXISTS office_groups_name_unique
    ON fleetgroups.office_groups (account, lower(name));

-- What a DELETE leaves: the key, the revision of the delete and who had it.
CREATE TABLE IF NOT EXISTS fleetgroups.office_tombstones (
    account text NOT NULL,
    id text NOT NULL,
    revision bigint NOT NULL,
    deleted_at timestamptz NOT NULL,
    ever_gateways text[],
    PRIMARY KEY (account, id)
);
CREATE INDEX IF NOT EXISTS office_tombstones_revision ON fleetgroups.office_tombstones (revision);

-- The union of two "ever" lists, NULL (every gateway) absorbing.
CREATE OR REPLACE FUNCTION fleetgroups.office_union(a text[], b text[]) RETURNS text[]
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN a IS NULL OR b IS NULL THEN NULL
                ELSE ARRAY(SELECT DISTINCT x FROM unnest(a || b) AS x ORDER BY x) END
$$;

-- The rules every gateway holds a group to (device IDs: 1-64 characters, no white
-- space at either end, no control characters, each once), checked before the row is
-- stored, and the revision drawn under the lock.
CREATE OR REPLACE FUNCTION fleetgroups.office_groups_stamp() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    d text;
    gone fleetgroups.office_tombstones%ROWTYPE;
BEGIN
    IF TG_OP = 'UPDATE' AND (NEW.account, NEW.id) IS DISTINCT FROM (OLD.account, OLD.id) THEN
        RAISE EXCEPTION 'office group %/%: account and id never change; DELETE it and INSERT a new one',
            OLD.account, OLD.id USING ERRCODE = 'check_violation';
    END IF;
    FOREACH d IN ARRAY NEW.devices LOOP
        IF char_length(d) NOT BETWEEN 1 AND 64 OR d ~ '^\s|\s$' OR d ~ '[[:cntrl:]]' THEN
            RAISE EXCEPTION 'office group %/%: device ID % must be 1-64 characters, without white space at either end or control characters',
                NEW.account, NEW.id, quote_literal(d) USING ERRCODE = 'check_violation';
        END IF;
    END LOOP;
    IF (SELECT count(DISTINCT x) FROM unnest(NEW.devices) AS x) <> cardinality(NEW.devices) THEN
        RAISE EXCEPTION 'office group %/%: devices lists a device twice', NEW.account, NEW.id
            USING ERRCODE = 'check_violation';
    END IF;
    PERFORM pg_advisory_xact_lock(7366128849271055107);
    NEW.revision := nextval('fleetgroups.office_revision');
    NEW.updated_at := now();
    IF TG_OP = 'UPDATE' THEN
        NEW.ever_gateways := fleetgroups.office_union(OLD.ever_gateways, NEW.gateways);
    ELSE
        NEW.ever_gateways := CASE WHEN NEW.gateways IS NULL THEN NULL
            ELSE fleetgroups.office_union('{}', NEW.gateways) END;
        -- A key deleted before and made again: the gateways that had the old one
        -- must hear of the new one too (a removal, or the new state).
        DELETE FROM fleetgroups.office_tombstones t
         WHERE t.account = NEW.account AND t.id = NEW.id RETURNING * INTO gone;
        IF FOUND THEN
            NEW.ever_gateways := fleetgroups.office_union(NEW.ever_gateways, gone.ever_gateways);
        END IF;
    END IF;
    RETURN NEW;
END
$$;

CREATE OR REPLACE FUNCTION fleetgroups.office_groups_tombstone() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(7366128849271055107);
    INSERT INTO fleetgroups.office_tombstones (account, id, revision, deleted_at, ever_gateways)
    VALUES (OLD.account, OLD.id, nextval('fleetgroups.office_revision'), now(), OLD.ever_gateways)
    ON CONFLICT (account, id) DO UPDATE
       SET revision = EXCLUDED.revision, deleted_at = EXCLUDED.deleted_at,
           ever_gateways = EXCLUDED.ever_gateways;
    RETURN OLD;
END
$$;

-- TRUNCATE would remove rows without tombstones: the gateways would never hear of it.
CREATE OR REPLACE FUNCTION fleetgroups.office_groups_no_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'fleetgroups.office_groups: use DELETE, not TRUNCATE (gateways learn of deletes from their tombstones)';
END
$$;

DROP TRIGGER IF EXISTS office_groups_stamp ON fleetgroups.office_groups;
CREATE TRIGGER office_groups_stamp BEFORE INSERT OR UPDATE ON fleetgroups.office_groups
    FOR EACH ROW EXECUTE PROCEDURE fleetgroups.office_groups_stamp();
DROP TRIGGER IF EXISTS office_groups_tombstone ON fleetgroups.office_groups;
CREATE TRIGGER office_groups_tombstone AFTER DELETE ON fleetgroups.office_groups
    FOR EACH ROW EXECUTE PROCEDURE fleetgroups.office_groups_tombstone();
DROP TRIGGER IF EXISTS office_groups_no_truncate ON fleetgroups.office_groups;
CREATE TRIGGER office_groups_no_truncate BEFORE TRUNCATE ON fleetgroups.office_groups
    FOR EACH STATEMENT EXECUTE PROCEDURE fleetgroups.office_groups_no_truncate();

-- What each gateway reports after a pull: its cursor and the office changes it holds
-- back (a row per conflict), replaced as a whole by each report.
CREATE TABLE IF NOT EXISTS fleetgroups.office_gateways (
    gateway_id text PRIMARY KEY,
    office_cursor bigint NOT NULL,
    reported_at timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS fleetgroups.office_conflicts (
    gateway_id text NOT NULL,
    account text NOT NULL,
    id text NOT NULL,
    reason text NOT NULL,
    detail text NOT NULL,
    since timestamptz NOT NULL,
    PRIMARY KEY (gateway_id, account, id)
);

-- A gateway decommissioned or renamed (its gateways row deleted, or its id changed)
-- leaves no office report behind; a renamed gateway reports again under its new id.
CREATE OR REPLACE FUNCTION fleetgroups.office_gateway_gone() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM fleetgroups.office_conflicts WHERE gateway_id = OLD.gateway_id;
    DELETE FROM fleetgroups.office_gateways WHERE gateway_id = OLD.gateway_id;
    RETURN NULL;
END
$$;
DROP TRIGGER IF EXISTS office_gateway_gone ON fleetgroups.gateways;
CREATE TRIGGER office_gateway_gone AFTER DELETE OR UPDATE OF gateway_id ON fleetgroups.gateways
    FOR EACH ROW EXECUTE PROCEDURE fleetgroups.office_gateway_gone();

-- fleetgroups.groups says where each group comes from: 'office' for an office group a
-- gateway serves (ofc-<n>), 'local' for one made there. Set on insert (an id never
-- changes); rows from before are filled once.
ALTER TABLE fleetgroups.groups ADD COLUMN IF NOT EXISTS origin text;
CREATE OR REPLACE FUNCTION fleetgroups.groups_origin() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.origin := CASE WHEN NEW.id LIKE 'ofc-%' THEN 'office' ELSE 'local' END;
    RETURN NEW;
END
$$;
DROP TRIGGER IF EXISTS groups_origin ON fleetgroups.groups;
CREATE TRIGGER groups_origin BEFORE INSERT ON fleetgroups.groups
    FOR EACH ROW EXECUTE PROCEDURE fleetgroups.groups_origin();
UPDATE fleetgroups.groups SET origin = CASE WHEN id LIKE 'ofc-%' THEN 'office' ELSE 'local' END
 WHERE origin IS NULL;

-- Per gateway: the office revision it has applied through, how many office changes it
-- holds back, and when it last reported.
CREATE OR REPLACE VIEW fleetgroups.office_status AS
SELECT g.gateway_id,
       g.office_cursor,
       (SELECT coalesce(max(r), 0) FROM (
            SELECT max(revision) AS r FROM fleetgroups.office_groups
            UNION ALL SELECT max(revision) FROM fleetgroups.office_tombstones) AS m)
           AS office_revision,
       (SELECT count(*) FROM fleetgroups.office_conflicts c
         WHERE c.gateway_id = g.gateway_id) AS conflicts,
       g.reported_at,
       now() - g.reported_at AS reported_ago
  FROM fleetgroups.office_gateways g;
