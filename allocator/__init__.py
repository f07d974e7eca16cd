"""Pure allocation logic: which warehouses an order line should draw from, in what order.

No I/O here. The reserve script applies the order this package computes to live stock,
so reservation and split stay one atomic step in Redis.
"""

from allocator.strategies import STRATEGIES, Warehouse, preference

__all__ = ["STRATEGIES", "Warehouse", "preference"]
