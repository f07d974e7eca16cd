import { describe, expect, it, vi } from 'vitest'

import { Api, ApiError, problemOf, queryString, seg } from './api'

function reply(status: number, body: unknown, type = 'application/json'): Response {
  const text = typeof body === 'string' ? body : JSON.stringify(body)
  return new Response(status === 204 ? null : text, { status, headers: { 'content-type': type } })
}

function client(respond: (url: string, init: RequestInit) => Response, token: string | null = 'k-ops') {
  const calls: { url: string; init: RequestInit }[] = []
  const fetch = vi.fn(async (url: string | URL | Request, init?: RequestInit) => {
    calls.push({ url: String(url), init: init ?? {} })
    return respond(String(url), init ?? {})
  })
  const onUnauthorized = vi.fn()
  const api = new Api({ token: () => token, fetch: fetch as unknown as typeof globalThis.fetch, onUnauthorized })
  return { api, calls, onUnauthorized }
}

describe('queryString', () => {
  it('leaves out empty and missing values and escapes the rest', () => {
    expect(queryString({ user_id: 'u 1&x', status: '', sale_id: undefined, cursor: null, limit: 50 }))
      .toBe('?user_id=u+1%26x&limit=50')
    expect(queryString({})).toBe('')
    expect(queryString()).toBe('')
  })
})

describe('seg', () => {
  it('escapes a path segment, and a segment of dots cannot mean "up"', () => {
    expect(seg('web-1:a.b')).toBe('web-1%3Aa.b')
    expect(seg('a/b?c#d')).toBe('a%2Fb%3Fc%23d')
    expect(seg('..')).toBe('%2E%2E')
    expect(seg('.')).toBe('%2E')
  })
})

describe('Api', () => {
  it('sends the bearer in the Authorization header only, and JSON bodies', async () => {
    const { api, calls } = client(() => reply(200, { order_id: 'o-1' }))
    const order = await api.transition('o-1', 'cancel', { reason: 'ops' })
    expect(order).toEqual({ order_id: 'o-1' })
    expect(calls).toHaveLength(1)
    const { url, init } = calls[0]
    expect(url).toBe('/v1/orders/o-1/cancel')
    expect(url).not.toContain('k-ops')
    expect(init.method).toBe('POST')
    expect((init.headers as Record<string, string>).Authorization).toBe('Bearer k-ops')
    expect((init.headers as Record<string, string>)['Content-Type']).toBe('application/json')
    expect(init.body).toBe('{"reason":"ops"}')
    expect(init.credentials).toBe('omit')
  })

  it('sends no Authorization header without a token', async () => {
    const { api, calls } = client(() => reply(200, { role: 'ops' }), null)
    await api.whoami()
    expect((calls[0].init.headers as Record<string, string>).Authorization).toBeUndefined()
  })

  it('turns problem+json into an ApiError with the API words', async () => {
    const problem = { type: 'about:blank', title: 'Conflict', status: 409, code: 'illegal_transition',
      detail: 'cannot pay an order that is cancelled' }
    const { api, onUnauthorized } = client(() => reply(409, problem, 'application/problem+json'))
    const err = await api.transition('o-1', 'payment', { payment_id: 'p', amount: 0 }).catch((e) => e)
    expect(err).toBeInstanceOf(ApiError)
    expect(err.status).toBe(409)
    expect(err.code).toBe('illegal_transition')
    expect(err.detail).toBe('cannot pay an order that is cancelled')
    expect(err.plain).toBe('cannot pay an order that is cancelled (illegal_transition)')
    expect(onUnauthorized).not.toHaveBeenCalled()
  })

  it('reports a 401 to the session, which then ends', async () => {
    const { api, onUnauthorized } = client(() => reply(401, { code: 'invalid_token', detail: 'Invalid key or token' },
      'application/problem+json'))
    await expect(api.whoami()).rejects.toMatchObject({ status: 401, code: 'invalid_token' })
    expect(onUnauthorized).toHaveBeenCalledTimes(1)
  })

  it('a failure that is not problem+json still has words', async () => {
    const { api } = client(() => reply(502, '<html>Bad gateway</html>', 'text/html'))
    const err = await api.sales().catch((e) => e)
    expect(err).toBeInstanceOf(ApiError)
    expect(err.status).toBe(502)
    expect(err.plain).toContain('Bad gateway')
  })

  it('a gateway that does not answer is a network error, not a crash', async () => {
    const api = new Api({ token: () => 'k', fetch: (async () => { throw new TypeError('Failed to fetch') }) as unknown as typeof fetch })
    await expect(api.whoami()).rejects.toMatchObject({ status: 0, code: 'network_error' })
  })

  it('passes list filters as the query, and 204 is no body', async () => {
    const { api, calls } = client((url) => (url.startsWith('/v1/orders') ? reply(200, { orders: [], next: null }) : reply(204, '')))
    await api.orders({ user_id: 'u-1', status: 'paid', cursor: null, limit: 50 })
    expect(calls[0].url).toBe('/v1/orders?user_id=u-1&status=paid&limit=50')
    expect(await api.request('DELETE', '/v1/webhooks/h')).toBeUndefined()
  })

  it('downloads a file with the bearer', async () => {
    const { api, calls } = client(() => reply(200, 'order_id\no-1\n', 'text/csv'))
    const blob = await api.download('/v1/exports/orders.csv', { status: 'paid' })
    expect(await blob.text()).toBe('order_id\no-1\n')
    expect(calls[0].url).toBe('/v1/exports/orders.csv?status=paid')
    expect((calls[0].init.headers as Record<string, string>).Authorization).toBe('Bearer k-ops')
  })
})

describe('problemOf', () => {
  it('keeps only string members', async () => {
    const err = await problemOf(reply(422, { code: 7, detail: { html: '<b>' } }, 'application/problem+json'))
    expect(err.code).toBe('')
    expect(err.detail).toBe('')
    expect(err.plain).toBe('HTTP 422')
  })
})
