import { describe, expect, it } from 'vitest'

import type { Role, Status } from './api'
import { STATUSES } from './api'
import { actionsFor, canSee, cancelReasons, homeOf, mayListOrders, mayRepair, navFor, ordersTitle } from './nav'

const screens = (role: Role) => navFor(role).map((n) => n.screen)

describe('nav by role (contract 19)', () => {
  it('each role sees its screens', () => {
    expect(screens('user')).toEqual(['orders'])
    expect(screens('storefront')).toEqual(['orders'])
    expect(screens('payments')).toEqual(['orders', 'finance'])
    expect(screens('ops')).toEqual(['orders', 'stock', 'sales', 'live', 'health', 'finance'])
    expect(screens('admin')).toEqual(screens('ops'))
  })
  it('guards the screens it does not list', () => {
    expect(canSee('storefront', 'stock')).toBe(false)
    expect(canSee('payments', 'finance')).toBe(true)
    expect(canSee('payments', 'sales')).toBe(false)
    expect(canSee('ops', 'health')).toBe(true)
    expect(canSee('user', 'finance')).toBe(false)
  })
  it('home, titles, listing and repair', () => {
    expect(homeOf('user')).toBe('/orders')
    expect(ordersTitle('user')).toBe('My orders')
    expect(ordersTitle('storefront', 'web')).toBe('Orders on web')
    expect(mayListOrders('payments')).toBe(false)
    expect(mayListOrders('storefront')).toBe(true)
    expect(mayRepair('admin')).toBe(true)
    expect(mayRepair('ops')).toBe(false)
  })
})

describe('actions by role and status', () => {
  const table = (role: Role) => Object.fromEntries(STATUSES.map((s: Status) => [s, actionsFor(role, s)]))

  it('a user cancels only its unpaid order', () => {
    expect(table('user')).toEqual({ pending_payment: ['cancel'], paid: [], shipped: [], completed: [], cancelled: [],
      refunding: [], refunded: [] })
    expect(cancelReasons('user')).toEqual(['customer'])
  })
  it('a storefront reads only', () => {
    expect(STATUSES.flatMap((s) => actionsFor('storefront', s))).toEqual([])
  })
  it('payments pay, ship, complete and refund', () => {
    expect(table('payments')).toEqual({ pending_payment: ['pay'], paid: ['ship', 'refund'], shipped: ['complete', 'refund'],
      completed: ['refund'], cancelled: [], refunding: ['refund-confirm'], refunded: [] })
  })
  it('ops cancel and fulfil but do not record payments', () => {
    expect(table('ops')).toEqual({ pending_payment: ['cancel'], paid: ['cancel', 'ship', 'refund'],
      shipped: ['complete', 'refund'], completed: ['refund'], cancelled: [], refunding: ['refund-confirm'], refunded: [] })
    expect(cancelReasons('ops')).toContain('payment_failed')
  })
  it('admin may do all', () => {
    expect(actionsFor('admin', 'pending_payment')).toEqual(['pay', 'cancel'])
    expect(actionsFor('admin', 'paid')).toEqual(['cancel', 'ship', 'refund'])
  })
  it('nothing leaves a final status', () => {
    for (const role of ['user', 'storefront', 'payments', 'ops', 'admin'] as Role[]) {
      expect(actionsFor(role, 'cancelled')).toEqual([])
      expect(actionsFor(role, 'refunded')).toEqual([])
    }
  })
})
