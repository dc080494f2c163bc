DROP TABLE IF EXISTS cachedrepo_outbox;
