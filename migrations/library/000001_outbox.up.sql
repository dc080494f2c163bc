-- The invalidation outbox (repo.Options.Repairer): every write records its
-- cache key here in its own transaction; rows left after a failed cache
-- update are replayed by invalidation.Repairer.
CREATE TABLE cachedrepo_outbox (
    id         bigserial PRIMARY KEY,
    cache_key  text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX cachedrepo_outbox_created_at ON cachedrepo_outbox (created_at, id);
