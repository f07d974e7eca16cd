-- The order lifecycle: status changes as numbered events, and a hash chain over all events.

ALTER TABLE orders
    ADD COLUMN last_seq      integer NOT NULL DEFAULT 1,
    ADD COLUMN payment_id    text,
    ADD COLUMN cancel_reason text;

CREATE INDEX orders_status_created ON orders (status, created_at DESC, order_id DESC);
CREATE INDEX orders_channel_created ON orders (channel, created_at DESC, order_id DESC);
CREATE INDEX orders_sale_created ON orders (sale_id, created_at DESC, order_id DESC);

-- hash = sha256(prev_hash | stream_id | order_id | seq | type | at in ms | canonical data)
ALTER TABLE order_events
    ADD COLUMN prev_hash text,
    ADD COLUMN hash      text;
