-- The console's lists: payments and refunds by time (partial: only those events pay for the
-- index on the writer's insert), and the stock ledger by time, per SKU and across SKUs.
CREATE INDEX IF NOT EXISTS order_events_payments ON order_events (at DESC, id DESC) WHERE type = 'order.paid';
CREATE INDEX IF NOT EXISTS order_events_refunds ON order_events (at DESC, id DESC) WHERE type = 'order.refunding';
CREATE INDEX IF NOT EXISTS inventory_movements_sku_at ON inventory_movements (sku, at DESC, id DESC);
CREATE INDEX IF NOT EXISTS inventory_movements_at ON inventory_movements (at DESC, id DESC);
