import { describe, expect, it } from 'vitest'

import { csvFilename, exportQuery, exportsFor, formatTotal, netByCurrency, periodQuery, presetPeriod } from './finance'
import { queryString } from './api'

describe('totals', () => {
  it('formats a total per currency with its count', () => {
    expect(formatTotal({ currency: 'EUR', count: 12, amount: 123450 })).toBe('€1,234.50 in 12 payments')
    expect(formatTotal({ currency: 'JPY', count: 1, amount: 500 }, 'refund')).toBe('¥500 in 1 refund')
    expect(formatTotal({ currency: null, count: 2, amount: 700 })).toBe('700 in 2 payments')
    expect(formatTotal({ currency: 'XQQ', count: 0, amount: 0 }).replace('\u00a0', ' ')).toBe('XQQ 0.00 in 0 payments') // Intl takes any 3-letter code
  })

  it('nets payments and refunds per currency, no currency last', () => {
    const rows = netByCurrency(
      [{ currency: null, count: 1, amount: 5 }, { currency: 'USD', count: 2, amount: 3000 }, { currency: 'EUR', count: 3, amount: 9000 }],
      [{ currency: 'EUR', count: 1, amount: 2500 }, { currency: 'GBP', count: 1, amount: 100 }],
    )
    expect(rows).toEqual([
      { currency: 'EUR', paid: 9000, refunded: 2500, net: 6500, payments: 3, refunds: 1 },
      { currency: 'GBP', paid: 0, refunded: 100, net: -100, payments: 0, refunds: 1 },
      { currency: 'USD', paid: 3000, refunded: 0, net: 3000, payments: 2, refunds: 0 },
      { currency: null, paid: 5, refunded: 0, net: 5, payments: 1, refunds: 0 },
    ])
    expect(netByCurrency([], [])).toEqual([])
  })
})

describe('exports', () => {
  it('offers each role only the exports its key may take', () => {
    expect(exportsFor('payments').map((e) => e.kind)).toEqual(['payments', 'refunds'])
    expect(exportsFor('ops').map((e) => e.kind)).toEqual(['orders', 'payments', 'refunds', 'movements'])
    expect(exportsFor('admin').length).toBe(4)
    expect(exportsFor('storefront')).toEqual([])
  })

  it('sends the period, a currency for money only, a SKU and warehouse for movements', () => {
    const period = { from: '2026-11-11T00:00:00Z', to: '2026-11-12T00:00:00Z', currency: 'EUR' }
    const [orders, payments, , movements] = exportsFor('admin')
    expect(queryString(exportQuery(orders, period))).toBe('?from=2026-11-11T00%3A00%3A00Z&to=2026-11-12T00%3A00%3A00Z')
    expect(exportQuery(payments, period)).toEqual({ ...period })
    expect(queryString(exportQuery(movements, { ...period, from: null }, { sku: ' SKU-1 ', warehouse: '' })))
      .toBe('?to=2026-11-12T00%3A00%3A00Z&sku=SKU-1')
    expect(queryString(periodQuery({ from: null, to: null, currency: null }, { limit: 50, cursor: null }))).toBe('?limit=50')
  })

  it('names the file after what it holds, in characters every file system takes', () => {
    expect(csvFilename('payments', { from: '2026-11-11T00:00:00Z', to: '2026-11-12T06:30:00Z', currency: 'EUR' }))
      .toBe('payments_20261111T0000Z-20261112T0630Z_EUR.csv')
    expect(csvFilename('orders', {})).toBe('orders.csv')
    expect(csvFilename('refunds', { to: '2026-11-12T00:00:00+01:00' })).toBe('refunds_start-20261111T2300Z.csv')
    expect(csvFilename('movements', { from: '2026-11-11T00:00:00Z', sku: 'A/B:C', warehouse: 'W1' }))
      .toBe('movements_20261111T0000Z-now_A-B-C_W1.csv')
    expect(csvFilename('payments', { from: 'garbage' })).toBe('payments_x-now.csv')
  })
})

describe('presetPeriod', () => {
  const now = new Date('2026-11-11T10:20:30.400Z')
  it('ends at the next whole minute and starts the preset before', () => {
    expect(presetPeriod('hour', now)).toEqual({ from: '2026-11-11T09:21:00Z', to: '2026-11-11T10:21:00Z' })
    expect(presetPeriod('day', now)).toEqual({ from: '2026-11-10T10:21:00Z', to: '2026-11-11T10:21:00Z' })
    expect(presetPeriod('week', now).from).toBe('2026-11-04T10:21:00Z')
    expect(presetPeriod('month', now).from).toBe('2026-11-01T00:00:00Z')
  })
})
