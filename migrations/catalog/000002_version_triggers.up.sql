-- Every UPDATE of a catalogue row draws a new version, whoever makes it (see
-- migrations/library/000003_version_trigger.up.sql).
CREATE TRIGGER categories_version BEFORE UPDATE ON categories FOR EACH ROW EXECUTE FUNCTION cachedrepo_bump_version();
CREATE TRIGGER products_version BEFORE UPDATE ON products FOR EACH ROW EXECUTE FUNCTION cachedrepo_bump_version();
CREATE TRIGGER stores_version BEFORE UPDATE ON stores FOR EACH ROW EXECUTE FUNCTION cachedrepo_bump_version();
CREATE TRIGGER stock_version BEFORE UPDATE ON stock FOR EACH ROW EXECUTE FUNCTION cachedrepo_bump_version();
