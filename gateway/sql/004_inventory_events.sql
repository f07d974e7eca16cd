-- inventory.low_stock and inventory.sold_out belong to a SKU, not an order: they join the
-- same feed and hash chain with no order_id and no seq.
ALTER TABLE order_events
    ALTER COLUMN order_id DROP NOT NULL,
    ALTER COLUMN seq DROP NOT NULL;
