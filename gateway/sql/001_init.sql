-- The system of record: orders, their lines, allocations and events; stock and its ledger.

CREATE TABLE warehouses (
    warehouse_id text PRIMARY KEY,
    region       text,
    priority     integer NOT NULL DEFAULT 100,
    active       boolean NOT NULL DEFAULT true,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE sales (
    sale_id    text PRIMARY KEY,
    definition jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE orders (
    order_id       text PRIMARY KEY,
    user_id        text NOT NULL,
    channel        text NOT NULL,
    sale_id        text,
    status         text NOT NULL,
    ship_to        jsonb,
    currency       text,
    payload        jsonb NOT NULL,
    reserved_until timestamptz,
    created_at     timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL
);
CREATE INDEX orders_user_created ON orders (user_id, created_at DESC);
CREATE INDEX orders_created ON orders (created_at DESC);

CREATE TABLE order_items (
    order_id   text NOT NULL REFERENCES orders,
    line_no    integer NOT NULL,
    sku        text NOT NULL,
    qty        integer NOT NULL CHECK (qty > 0),
    unit_price bigint,
    PRIMARY KEY (order_id, line_no)
);

CREATE TABLE allocations (
    order_id  text NOT NULL REFERENCES orders,
    sku       text NOT NULL,
    warehouse text NOT NULL,
    qty       integer NOT NULL CHECK (qty > 0),
    PRIMARY KEY (order_id, sku, warehouse)
);

CREATE TABLE order_events (
    id        bigserial PRIMARY KEY,
    stream_id text NOT NULL UNIQUE,
    order_id  text NOT NULL REFERENCES orders,
    seq       integer NOT NULL,
    type      text NOT NULL,
    at        timestamptz NOT NULL,
    data      jsonb NOT NULL,
    UNIQUE (order_id, seq)
);

CREATE TABLE inventory (
    sku        text NOT NULL,
    warehouse  text NOT NULL,
    on_hand    bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sku, warehouse)
);

CREATE TABLE inventory_movements (
    id            bigserial PRIMARY KEY,
    stream_id     text NOT NULL UNIQUE,
    sku           text NOT NULL,
    warehouse     text NOT NULL,
    delta         bigint NOT NULL,
    on_hand_after bigint NOT NULL,
    reason        text NOT NULL,
    order_id      text,
    at            timestamptz NOT NULL
);
CREATE INDEX inventory_movements_sku ON inventory_movements (sku, warehouse, id);

CREATE TABLE stream_offsets (
    stream     text PRIMARY KEY,
    last_id    text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
