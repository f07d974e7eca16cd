-- Webhook subscriptions with their delivery cursor, and a row for every delivery attempt.

CREATE TABLE webhooks (
    webhook_id    text PRIMARY KEY,
    -- New for every subscription, also one re-created under a deleted id: the sender's
    -- advisory-lock key, and what attempts belong to, so a late attempt for the old
    -- subscription can never be booked on the new one.
    lock_key      integer GENERATED ALWAYS AS IDENTITY UNIQUE,
    url           text NOT NULL,
    events        text[] NOT NULL,  -- event types, or {*} for all
    secret        text NOT NULL,
    last_event_id bigint NOT NULL,  -- order_events.id delivered (or passed over) through
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (webhook_id, lock_key)
);

CREATE TABLE webhook_attempts (
    id          bigserial PRIMARY KEY,
    webhook_id  text NOT NULL,
    lock_key    integer NOT NULL,
    event_id    bigint NOT NULL,
    attempt     integer NOT NULL,   -- 1 for the first try of this event
    status      integer,            -- the HTTP status, or null when none came back
    error       text,               -- why none came back: refused, timeout, ...
    at          timestamptz NOT NULL DEFAULT now(),
    duration_ms integer NOT NULL,
    FOREIGN KEY (webhook_id, lock_key) REFERENCES webhooks (webhook_id, lock_key) ON DELETE CASCADE,
    UNIQUE (lock_key, event_id, attempt),
    CHECK ((status IS NULL) <> (error IS NULL))
);
