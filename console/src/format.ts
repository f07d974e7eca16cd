// Money, times and counts as the screens show them. Money is in minor units (the API's
// integers); times are RFC 3339 UTC and shown in UTC, the clock of the whole system.

const moneyFormats = new Map<string, Intl.NumberFormat>()

function moneyFormat(currency: string): Intl.NumberFormat | null {
  let format = moneyFormats.get(currency)
  if (!format) {
    try {
      format = new Intl.NumberFormat('en-US', { style: 'currency', currency })
    } catch {
      return null // not an ISO 4217 code Intl knows
    }
    moneyFormats.set(currency, format)
  }
  return format
}

/** Minor units in a currency ("EUR" 12345 -> "€123.45", "JPY" 500 -> "¥500"); without a currency the
 * integer itself, since the scale is unknown; "—" for none. */
export function formatMoney(minor: number | null | undefined, currency?: string | null): string {
  if (minor === null || minor === undefined || !Number.isFinite(minor)) return '—'
  const format = currency ? moneyFormat(currency) : null
  if (!format) return currency ? `${formatCount(minor)} ${currency} (minor units)` : formatCount(minor)
  const digits = format.resolvedOptions().maximumFractionDigits ?? 2
  return format.format(minor / 10 ** digits)
}

/** Major units typed by a person ("123.45") to minor units in a currency; null when not a number. */
export function toMinor(text: string, currency?: string | null): number | null {
  const trimmed = text.trim()
  if (!/^\d+(\.\d+)?$/.test(trimmed)) return null
  const format = currency ? moneyFormat(currency) : null
  const digits = format ? (format.resolvedOptions().maximumFractionDigits ?? 2) : 0
  const [whole, fraction = ''] = trimmed.split('.')
  if (fraction.length > digits) return null
  return Number(whole) * 10 ** digits + Number(fraction.padEnd(digits, '0') || '0')
}

export function formatCount(n: number | null | undefined): string {
  if (n === null || n === undefined || !Number.isFinite(n)) return '—'
  return n.toLocaleString('en-US')
}

function pad(n: number, width = 2): string {
  return String(n).padStart(width, '0')
}

/** "2026-11-11 00:00:05 UTC"; "—" for none; the text itself when it is not a time. */
export function formatTime(iso: string | null | undefined): string {
  if (!iso) return '—'
  const t = new Date(iso)
  if (Number.isNaN(t.getTime())) return iso
  return `${t.getUTCFullYear()}-${pad(t.getUTCMonth() + 1)}-${pad(t.getUTCDate())} ` +
    `${pad(t.getUTCHours())}:${pad(t.getUTCMinutes())}:${pad(t.getUTCSeconds())} UTC`
}

/** "in 5 min", "3 h ago": how far ``iso`` is from ``now``. */
export function formatRelative(iso: string | null | undefined, now: Date = new Date()): string {
  if (!iso) return '—'
  const t = new Date(iso).getTime()
  if (Number.isNaN(t)) return iso
  const seconds = Math.round((t - now.getTime()) / 1000)
  const abs = Math.abs(seconds)
  const text = abs < 60 ? `${abs} s` : abs < 3600 ? `${Math.round(abs / 60)} min`
    : abs < 86400 ? `${Math.round(abs / 3600)} h` : `${Math.round(abs / 86400)} d`
  return seconds >= 0 ? `in ${text}` : `${text} ago`
}

/** The value of an <input type="datetime-local"> (read as UTC) as RFC 3339, or null when empty or bad. */
export function localInputToIso(value: string): string | null {
  const m = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2}))?$/.exec(value.trim())
  if (!m) return null
  const [, y, mo, d, h, mi, s = '00'] = m
  const iso = `${y}-${mo}-${d}T${h}:${mi}:${s}Z`
  return Number.isNaN(new Date(iso).getTime()) ? null : iso
}

/** An RFC 3339 time as the value of an <input type="datetime-local">, in UTC. */
export function isoToLocalInput(iso: string | null | undefined): string {
  if (!iso) return ''
  const t = new Date(iso)
  if (Number.isNaN(t.getTime())) return ''
  return `${t.getUTCFullYear()}-${pad(t.getUTCMonth() + 1)}-${pad(t.getUTCDate())}T` +
    `${pad(t.getUTCHours())}:${pad(t.getUTCMinutes())}`
}

/** "pending_payment" -> "pending payment". */
export function humanize(word: string | null | undefined): string {
  return (word ?? '').replace(/[_.]/g, ' ')
}

/** Where a sale is in its window at ``now``. */
export function saleState(startsAt: string, endsAt: string, now: Date = new Date()): 'upcoming' | 'live' | 'ended' {
  const t = now.getTime()
  if (t < new Date(startsAt).getTime()) return 'upcoming'
  return t < new Date(endsAt).getTime() ? 'live' : 'ended'
}
