-- Stream entries PostgreSQL refused for their data (or that could not be read), kept so the
-- writer goes on without them: the raw entry, the error, and when a replay wrote it.
-- entry is bytea: the fields as JSON of latin-1 strings, so every byte comes back exactly,
-- NUL included, which text and jsonb refuse.
CREATE TABLE IF NOT EXISTS quarantine (
    id             bigserial PRIMARY KEY,
    stream_id      text NOT NULL UNIQUE,
    type           text,
    order_id       text,
    entry          bytea NOT NULL,
    error          text NOT NULL,
    quarantined_at timestamptz NOT NULL DEFAULT now(),
    replayed_at    timestamptz
);
CREATE INDEX IF NOT EXISTS quarantine_open ON quarantine (id) WHERE replayed_at IS NULL;
