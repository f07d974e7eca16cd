-- effect.lua: one order line's stock effect. Not a script of its own: gateway/scripts.py puts
-- it before transition.lua and hold.lua, which release and ship an order's lines.
-- It reads no KEYS or ARGV.
--
-- line_effect(stock_key, sku, group, effect, events_key, order_id, restock)
--   for the line's allocation group "wh=qty,...": 'release' gives the units back to available
--   and publishes the SKU on the restock channel; 'ship' takes them out of on hand and reserved
--   with one inventory.moved entry per warehouse in events_key. Returns the line's units.

local function line_effect(stock_key, sku, group, effect, events_key, order_id, restock)
  if effect == 'release' then redis.call('PUBLISH', restock, sku) end
  local units = 0
  for wh, qty in string.gmatch(group, '([^=,]+)=(%d+)') do
    qty = tonumber(qty)
    units = units + qty
    redis.call('HINCRBY', stock_key, 'r:' .. wh, -qty)
    if effect == 'release' then
      redis.call('HINCRBY', stock_key, wh, qty)
    else
      local left = redis.call('HMGET', stock_key, wh, 'r:' .. wh)
      local on_hand = tonumber(left[1] or '0') + tonumber(left[2] or '0')
      redis.call('XADD', events_key, '*', 't', 'inventory.moved', 's', sku, 'w', wh,
        'd', string.format('%d', -qty), 'h', string.format('%d', on_hand), 'r', 'shipment', 'o', order_id)
    end
  end
  return units
end
