"""Pure allocation logic: which warehouses an order line should draw from, in what order.

No I/O here. The reserve script applies the preference orders and the split policy this
package defines to live stock, so reservation and split stay one atomic step in Redis;
``policy.plan`` is the Python reference of the in-script policy.
"""

from allocator.policy import plan
from allocator.strategies import STRATEGIES, Warehouse, preference

__all__ = ["STRATEGIES", "Warehouse", "plan", "preference"]
