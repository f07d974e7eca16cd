-- orders (by created_at) and order_events (by at) become partitioned by calendar month (UTC),
-- so retention detaches a month instead of deleting rows, and vacuum works one month at a
-- time. Existing rows are carried over; ids keep their sequence (the feed cursor, webhook
-- cursors and the hash chain stay valid).
--
-- A partitioned table's unique keys must hold its partition column, so order_id alone is no
-- longer a primary key: (order_id, created_at) is. An order's created_at comes from its
-- stream entry, so a re-delivered entry still collides on the key; and every writer inserts
-- under one advisory lock after a NOT EXISTS probe on order_id (gateway/writer.py), so an
-- order id stays unique across months too. Likewise order_events: (id, at) and
-- (stream_id, at), the writer skipping stream ids already written, and refusing an
-- (order_id, seq) already taken (the unique key it had), under the same lock.
--
-- oms_month_partition() is the one place a month's partition is made: by this migration for
-- the months its rows span, and by gateway/partitions.py for the months ahead. Rows that fell
-- into <table>_default meanwhile move into the new month's partition before it is attached.

CREATE FUNCTION oms_month_partition(parent text, col text, month date) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    lo   timestamptz := date_trunc('month', month::timestamp) AT TIME ZONE 'UTC';
    hi   timestamptz := (date_trunc('month', month::timestamp) + interval '1 month') AT TIME ZONE 'UTC';
    name text := format('%s_%s', parent, to_char(month, 'YYYY_MM'));
BEGIN
    IF to_regclass(name) IS NOT NULL THEN
        RETURN name;
    END IF;
    EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', name, parent);
    EXECUTE format('WITH moved AS (DELETE FROM %I WHERE %I >= %L AND %I < %L RETURNING *) INSERT INTO %I SELECT * FROM moved',
                   parent || '_default', col, lo, col, hi, name);
    EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)', parent, name, lo, hi);
    RETURN name;
END $$;

ALTER TABLE orders RENAME TO orders_unpartitioned;
ALTER TABLE order_events RENAME TO order_events_unpartitioned;
ALTER SEQUENCE order_events_id_seq OWNED BY NONE;

CREATE TABLE orders (LIKE orders_unpartitioned INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
    PARTITION BY RANGE (created_at);
CREATE TABLE orders_default PARTITION OF orders DEFAULT;
CREATE TABLE order_events (LIKE order_events_unpartitioned INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
    PARTITION BY RANGE (at);
CREATE TABLE order_events_default PARTITION OF order_events DEFAULT;

-- A month for every month the rows span (at most the last five years: older rows wait in the
-- default partition), through two months ahead.
DO $$
DECLARE
    first timestamptz := greatest(
        least((SELECT min(created_at) FROM orders_unpartitioned), (SELECT min(at) FROM order_events_unpartitioned), now()),
        now() - interval '5 years');
    m date;
BEGIN
    FOR m IN SELECT generate_series(date_trunc('month', first AT TIME ZONE 'UTC'),
                                    date_trunc('month', now() AT TIME ZONE 'UTC') + interval '2 months',
                                    interval '1 month')::date
    LOOP
        PERFORM oms_month_partition('orders', 'created_at', m);
        PERFORM oms_month_partition('order_events', 'at', m);
    END LOOP;
END $$;

INSERT INTO orders SELECT * FROM orders_unpartitioned;
INSERT INTO order_events SELECT * FROM order_events_unpartitioned;
DROP TABLE orders_unpartitioned;
DROP TABLE order_events_unpartitioned;
ALTER SEQUENCE order_events_id_seq OWNED BY order_events.id;

ALTER TABLE orders ADD PRIMARY KEY (order_id, created_at);
CREATE INDEX orders_user_created ON orders (user_id, created_at DESC);
CREATE INDEX orders_created ON orders (created_at DESC);
CREATE INDEX orders_status_created ON orders (status, created_at DESC, order_id DESC);
CREATE INDEX orders_channel_created ON orders (channel, created_at DESC, order_id DESC);
CREATE INDEX orders_sale_created ON orders (sale_id, created_at DESC, order_id DESC);

ALTER TABLE order_events ADD PRIMARY KEY (id, at);
ALTER TABLE order_events ADD UNIQUE (stream_id, at);
CREATE INDEX order_events_order_seq ON order_events (order_id, seq);
CREATE INDEX order_events_payments ON order_events (at DESC, id DESC) WHERE type = 'order.paid';
CREATE INDEX order_events_refunds ON order_events (at DESC, id DESC) WHERE type = 'order.refunding';
