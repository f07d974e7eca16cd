import { describe, expect, it } from 'vitest'

import { formatCount, formatMoney, formatRelative, formatTime, humanize, isoToLocalInput, localInputToIso, saleState, toMinor } from './format'

describe('money', () => {
  it('shows minor units in the currency scale', () => {
    expect(formatMoney(12345, 'EUR')).toBe('€123.45')
    expect(formatMoney(500, 'JPY')).toBe('¥500')
    expect(formatMoney(1_000_000, 'USD')).toBe('$10,000.00')
    expect(formatMoney(0, 'EUR')).toBe('€0.00')
  })
  it('without a currency shows the integer; none is a dash', () => {
    expect(formatMoney(12345)).toBe('12,345')
    expect(formatMoney(null, 'EUR')).toBe('—')
    expect(formatMoney(undefined)).toBe('—')
  })
  it('an unknown code does not throw', () => {
    expect(formatMoney(5, 'ZZ!')).toBe('5 ZZ! (minor units)')
  })
  it('reads what a person typed back into minor units', () => {
    expect(toMinor('123.45', 'EUR')).toBe(12345)
    expect(toMinor('123', 'EUR')).toBe(12300)
    expect(toMinor('12345')).toBe(12345)
    expect(toMinor('1.234', 'EUR')).toBeNull()
    expect(toMinor('-1', 'EUR')).toBeNull()
    expect(toMinor('abc')).toBeNull()
  })
})

describe('time', () => {
  it('shows UTC', () => {
    expect(formatTime('2026-11-11T00:00:05.123Z')).toBe('2026-11-11 00:00:05 UTC')
    expect(formatTime('2026-11-11T08:00:00+08:00')).toBe('2026-11-11 00:00:00 UTC')
    expect(formatTime(null)).toBe('—')
    expect(formatTime('not a time')).toBe('not a time')
  })
  it('datetime-local inputs are read and written as UTC', () => {
    expect(localInputToIso('2026-11-11T00:15')).toBe('2026-11-11T00:15:00Z')
    expect(localInputToIso('2026-11-11T00:15:30')).toBe('2026-11-11T00:15:30Z')
    expect(localInputToIso('')).toBeNull()
    expect(localInputToIso('2026-13-45T99:00')).toBeNull()
    expect(isoToLocalInput('2026-11-11T00:15:59.999Z')).toBe('2026-11-11T00:15')
    expect(isoToLocalInput(undefined)).toBe('')
  })
  it('relative times', () => {
    const now = new Date('2026-11-11T00:00:00Z')
    expect(formatRelative('2026-11-11T00:05:00Z', now)).toBe('in 5 min')
    expect(formatRelative('2026-11-10T21:00:00Z', now)).toBe('3 h ago')
    expect(formatRelative('2026-11-11T00:00:30Z', now)).toBe('in 30 s')
  })
  it('a sale window', () => {
    const now = new Date('2026-11-11T00:00:00Z')
    expect(saleState('2026-11-11T01:00:00Z', '2026-11-11T02:00:00Z', now)).toBe('upcoming')
    expect(saleState('2026-11-10T00:00:00Z', '2026-11-12T00:00:00Z', now)).toBe('live')
    expect(saleState('2026-11-10T00:00:00Z', '2026-11-11T00:00:00Z', now)).toBe('ended')
  })
})

describe('words and counts', () => {
  it('humanize and count', () => {
    expect(humanize('pending_payment')).toBe('pending payment')
    expect(humanize('order.refunding')).toBe('order refunding')
    expect(formatCount(1234567)).toBe('1,234,567')
    expect(formatCount(null)).toBe('—')
  })
})
