// What each role sees and may do. The gateway decides every call (a screen shown by mistake
// only gets 403s); this keeps the console from offering what the role cannot do.
import type { Role, Status } from './api'

export type Screen = 'orders' | 'stock' | 'sales' | 'finance' | 'live' | 'health'
export interface NavEntry { screen: Screen; label: string; path: string }

const ENTRIES: Record<Screen, NavEntry> = {
  orders: { screen: 'orders', label: 'Orders', path: '/orders' },
  stock: { screen: 'stock', label: 'Stock', path: '/stock' },
  sales: { screen: 'sales', label: 'Sales', path: '/sales' },
  live: { screen: 'live', label: 'Live board', path: '/live' },
  health: { screen: 'health', label: 'Health', path: '/health' },
  finance: { screen: 'finance', label: 'Finance', path: '/finance' },
}

const SCREENS: Record<Role, Screen[]> = {
  user: ['orders'],
  storefront: ['orders'],
  payments: ['orders', 'finance'],
  ops: ['orders', 'stock', 'sales', 'live', 'health', 'finance'],
  admin: ['orders', 'stock', 'sales', 'live', 'health', 'finance'],
}

export function navFor(role: Role): NavEntry[] {
  return (SCREENS[role] ?? []).map((screen) => ENTRIES[screen])
}

export function canSee(role: Role, screen: Screen): boolean {
  return (SCREENS[role] ?? []).includes(screen)
}

/** The page a role lands on after signing in. */
export function homeOf(role: Role): string {
  return navFor(role)[0]?.path ?? '/orders'
}

/** What the Orders screen calls the list: a user's own orders, a storefront's channel's, or all. */
export function ordersTitle(role: Role, channel?: string): string {
  if (role === 'user') return 'My orders'
  if (role === 'storefront') return `Orders on ${channel ?? 'this channel'}`
  return 'Orders'
}

/** Who may list orders (GET /v1/orders): a payments key reads orders one by one, by id. */
export function mayListOrders(role: Role): boolean {
  return role !== 'payments'
}

/** Only admin may repair stock and replay quarantined entries and webhooks (Health). */
export function mayRepair(role: Role): boolean {
  return role === 'admin'
}

export type Action = 'pay' | 'ship' | 'complete' | 'cancel' | 'refund' | 'refund-confirm'

// The state machine (gateway/lifecycle.py): the statuses each action leaves from.
const FROM: Record<Action, Status[]> = {
  pay: ['pending_payment'],
  cancel: ['pending_payment', 'paid'],
  ship: ['paid'],
  complete: ['shipped'],
  refund: ['paid', 'shipped', 'completed'],
  'refund-confirm': ['refunding'],
}

// Who does what (the contract): a buyer cancels its own unpaid order; a storefront reads;
// payments pay, ship, complete and refund; ops fulfil and cancel; admin anything.
const BY_ROLE: Record<Role, Action[]> = {
  user: ['cancel'],
  storefront: [],
  payments: ['pay', 'ship', 'complete', 'refund', 'refund-confirm'],
  ops: ['cancel', 'ship', 'complete', 'refund', 'refund-confirm'],
  admin: ['pay', 'cancel', 'ship', 'complete', 'refund', 'refund-confirm'],
}

export const ACTION_LABELS: Record<Action, string> = {
  pay: 'Record payment', ship: 'Ship', complete: 'Complete', cancel: 'Cancel',
  refund: 'Refund', 'refund-confirm': 'Confirm refund',
}

/** The route of each action under /v1/orders/{id}/. */
export const ACTION_PATHS: Record<Action, string> = {
  pay: 'payment', ship: 'ship', complete: 'complete', cancel: 'cancel', refund: 'refund',
  'refund-confirm': 'refund-confirm',
}

/** The actions ``role`` may take on an order in ``status``, in the order the page shows them. */
export function actionsFor(role: Role, status: Status): Action[] {
  return (BY_ROLE[role] ?? []).filter((action) => {
    if (role === 'user' && action === 'cancel') return status === 'pending_payment'
    return FROM[action].includes(status)
  })
}

/** The reasons a role may give for a cancel (the API takes customer, ops, payment_failed). */
export function cancelReasons(role: Role): string[] {
  return role === 'user' ? ['customer'] : ['ops', 'customer', 'payment_failed']
}
