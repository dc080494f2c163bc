-- cachedrepo_bump_version draws a new value for a row's "version" column on
-- every UPDATE, from the column's own identity or serial sequence. Install it
-- on a cached table when anything but the stores writes it (psql, batch jobs,
-- other services): the WAL invalidator then sees every change as newer than
-- what is cached, and write-through values of the stores still survive it.
--
--   CREATE TRIGGER products_version BEFORE UPDATE ON products
--       FOR EACH ROW EXECUTE FUNCTION cachedrepo_bump_version();
CREATE FUNCTION cachedrepo_bump_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.version := nextval(pg_get_serial_sequence(
        quote_ident(TG_TABLE_SCHEMA) || '.' || quote_ident(TG_TABLE_NAME), 'version'));
    RETURN NEW;
END
$$;

-- Counters changed by SQL reach the cached counters too.
CREATE TRIGGER counters_version BEFORE UPDATE ON counters
    FOR EACH ROW EXECUTE FUNCTION cachedrepo_bump_version();
