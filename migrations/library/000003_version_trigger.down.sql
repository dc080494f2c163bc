DROP TRIGGER counters_version ON counters;
DROP FUNCTION cachedrepo_bump_version();
