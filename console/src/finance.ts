// The Finance screen's logic: the API's shapes for payments and refunds, totals per currency
// (and the net of the two), the exports a role may take, their file names, and saving a blob.
import type { Query, Role } from './api'
import { formatCount, formatMoney } from './format'

export interface Total { currency: string | null; count: number; amount: number }
export interface Payment {
  order_id: string
  payment_id: string | null
  amount: number | null
  currency: string | null
  at: string
  user_id: string
  channel: string
}
export interface Refund {
  order_id: string
  amount: number | null
  currency: string | null
  reason: string | null
  at: string
  status: 'refunding' | 'refunded'
}
export interface PaymentList { payments: Payment[]; totals: Total[]; next: string | null }
export interface RefundList { refunds: Refund[]; totals: Total[]; next: string | null }

export interface Period { from: string | null; to: string | null; currency: string | null }

/** The query of a list or export: the period's bounds and currency, empties left out. */
export function periodQuery(period: Period, extra: Query = {}): Query {
  return { from: period.from, to: period.to, currency: period.currency, ...extra }
}

/** "€1,234.50 in 12 payments": a total as a line of text. Orders without a currency have
 * amounts of unknown scale, so they show as bare minor units. */
export function formatTotal(total: Total, noun = 'payment'): string {
  const what = `${formatCount(total.count)} ${noun}${total.count === 1 ? '' : 's'}`
  return `${formatMoney(total.amount, total.currency)} in ${what}`
}

export interface NetRow { currency: string | null; paid: number; refunded: number; net: number; payments: number; refunds: number }

/** Per currency: paid, refunded and what is left, in currency order (no currency last). */
export function netByCurrency(paid: Total[], refunded: Total[]): NetRow[] {
  const rows = new Map<string, NetRow>()
  const row = (currency: string | null) => {
    const key = currency ?? ''
    let r = rows.get(key)
    if (!r) rows.set(key, (r = { currency, paid: 0, refunded: 0, net: 0, payments: 0, refunds: 0 }))
    return r
  }
  for (const t of paid) {
    const r = row(t.currency)
    r.paid += t.amount
    r.payments += t.count
  }
  for (const t of refunded) {
    const r = row(t.currency)
    r.refunded += t.amount
    r.refunds += t.count
  }
  for (const r of rows.values()) r.net = r.paid - r.refunded
  return [...rows.values()].sort((a, b) =>
    a.currency === b.currency ? 0 : a.currency === null ? 1 : b.currency === null ? -1 : a.currency.localeCompare(b.currency))
}

export type ExportKind = 'orders' | 'payments' | 'refunds' | 'movements'

export interface ExportSpec { kind: ExportKind; label: string; path: string; currency: boolean }

const EXPORTS: Record<ExportKind, ExportSpec> = {
  orders: { kind: 'orders', label: 'Orders', path: '/v1/exports/orders.csv', currency: false },
  payments: { kind: 'payments', label: 'Payments', path: '/v1/exports/payments.csv', currency: true },
  refunds: { kind: 'refunds', label: 'Refunds', path: '/v1/exports/refunds.csv', currency: true },
  movements: { kind: 'movements', label: 'Stock movements', path: '/v1/exports/movements.csv', currency: false },
}

// The roles of each export route (gateway/web/urls.py): a payments key exports money only.
const EXPORT_ROLES: Record<ExportKind, Role[]> = {
  orders: ['ops', 'admin'],
  payments: ['payments', 'ops', 'admin'],
  refunds: ['payments', 'ops', 'admin'],
  movements: ['ops', 'admin'],
}

export function exportsFor(role: Role): ExportSpec[] {
  return (Object.keys(EXPORTS) as ExportKind[]).filter((k) => EXPORT_ROLES[k].includes(role)).map((k) => EXPORTS[k])
}

/** The query an export takes: the period (orders: on created_at), a currency for money only,
 * and for movements a SKU and a warehouse. */
export function exportQuery(spec: ExportSpec, period: Period, movement: { sku?: string; warehouse?: string } = {}): Query {
  const query: Query = { from: period.from, to: period.to }
  if (spec.currency) query.currency = period.currency
  if (spec.kind === 'movements') {
    query.sku = movement.sku?.trim() || null
    query.warehouse = movement.warehouse?.trim() || null
  }
  return query
}

function stamp(iso: string): string {
  // 2026-11-11T00:00:00Z -> 20261111T0000Z (no colons: Windows refuses them in file names)
  const t = new Date(iso)
  if (Number.isNaN(t.getTime())) return 'x'
  const p = (n: number) => String(n).padStart(2, '0')
  return `${t.getUTCFullYear()}${p(t.getUTCMonth() + 1)}${p(t.getUTCDate())}T${p(t.getUTCHours())}${p(t.getUTCMinutes())}Z`
}

/** "payments_20261111T0000Z-20261112T0000Z_EUR.csv": what was exported, in the name, in
 * characters every file system takes. */
export function csvFilename(kind: ExportKind, query: Query): string {
  const parts: string[] = [kind]
  const from = typeof query.from === 'string' && query.from ? stamp(query.from) : ''
  const to = typeof query.to === 'string' && query.to ? stamp(query.to) : ''
  if (from || to) parts.push(`${from || 'start'}-${to || 'now'}`)
  for (const name of ['currency', 'sku', 'warehouse']) {
    const value = query[name]
    if (typeof value === 'string' && value) parts.push(value.replace(/[^A-Za-z0-9._-]+/g, '-').slice(0, 60))
  }
  return `${parts.join('_')}.csv`
}

/** Save ``blob`` as ``filename`` through a temporary object URL (the key never touches a URL). */
export function saveBlob(blob: Blob, filename: string, doc: Document = document): void {
  const url = URL.createObjectURL(blob)
  const a = doc.createElement('a')
  a.href = url
  a.download = filename
  a.rel = 'noopener'
  a.style.display = 'none'
  doc.body.appendChild(a)
  try {
    a.click()
  } finally {
    a.remove()
    setTimeout(() => URL.revokeObjectURL(url), 10_000) // after the download has read it
  }
}

/** The bounds of a preset period ending ``now``: the last hour, day, week or this month so far. */
export function presetPeriod(preset: 'hour' | 'day' | 'week' | 'month', now: Date = new Date()): { from: string; to: string } {
  const to = new Date(Math.ceil(now.getTime() / 60_000) * 60_000) // the next whole minute, so "now" is in
  const from = new Date(to)
  if (preset === 'hour') from.setUTCHours(from.getUTCHours() - 1)
  else if (preset === 'day') from.setUTCDate(from.getUTCDate() - 1)
  else if (preset === 'week') from.setUTCDate(from.getUTCDate() - 7)
  else {
    from.setUTCDate(1)
    from.setUTCHours(0, 0, 0, 0)
  }
  const iso = (t: Date) => t.toISOString().replace(/\.\d{3}Z$/, 'Z')
  return { from: iso(from), to: iso(to) }
}
