import { afterEach, describe, expect, it, vi } from 'vitest'

import {
  applyMessage, applyStats, applyStock, backoffDelay, emptyBoard, formatEta, formatMs, formatRate, LiveStream,
  refusalRows, SseParser, type LiveStats, type SseMessage, type StreamStatus,
} from './live'

function all(parser: SseParser, chunks: string[]): SseMessage[] {
  return chunks.flatMap((c) => parser.feed(c))
}

/** Every way of cutting ``text`` in two, fed to a fresh parser: each must give the same events. */
function everySplit(text: string): SseMessage[][] {
  const out: SseMessage[][] = []
  for (let i = 0; i <= text.length; i++) out.push(all(new SseParser(), [text.slice(0, i), text.slice(i)]))
  return out
}

describe('SseParser', () => {
  it('reads an event with a name, an id and JSON data', () => {
    const p = new SseParser()
    expect(p.feed('event: stats\nid: 7\ndata: {"a":1}\n\n')).toEqual([{ event: 'stats', data: '{"a":1}', id: '7' }])
    expect(p.lastEventId).toBe('7')
  })

  it('gives the same events however the chunks are cut, mid-line or mid-line-end', () => {
    const text = 'event: stock\r\nid: 42\r\ndata: {"sku":"A"}\r\n\r\n: ping\r\n\r\nevent: stats\rdata: x\r\r'
    const want = [{ event: 'stock', data: '{"sku":"A"}', id: '42' }, { event: 'stats', data: 'x', id: '42' }]
    for (const got of everySplit(text)) expect(got).toEqual(want)
  })

  it('feeds one character at a time', () => {
    const text = 'data: one\ndata: two\n\nevent: e\ndata:three\n\n'
    expect(all(new SseParser(), [...text])).toEqual([
      { event: 'message', data: 'one\ntwo', id: '' }, { event: 'e', data: 'three', id: '' }])
  })

  it('joins multi-line data with newlines and keeps empty data lines', () => {
    const p = new SseParser()
    expect(p.feed('data: a\ndata\ndata:  b\n\n')).toEqual([{ event: 'message', data: 'a\n\n b', id: '' }])
  })

  it('skips comments and unknown fields, and dispatches nothing without data', () => {
    const p = new SseParser()
    expect(p.feed(': hello\n:\nfoo: bar\nevent: lonely\n\n')).toEqual([])
    // the event name of a data-less block does not leak into the next one
    expect(p.feed('data: x\n\n')).toEqual([{ event: 'message', data: 'x', id: '' }])
  })

  it('keeps the last id for later events, resets it on an empty id, ignores one with NUL', () => {
    const p = new SseParser()
    expect(p.feed('id: 5\ndata: a\n\ndata: b\n\n').map((m) => m.id)).toEqual(['5', '5'])
    expect(p.feed('id: 6\0x\ndata: c\n\n')[0].id).toBe('5')
    expect(p.feed('id\ndata: d\n\n')[0].id).toBe('')
  })

  it('commits an id at the blank line, even of a block without data', () => {
    const p = new SseParser()
    p.feed('id: 9\n')
    expect(p.lastEventId).toBe('') // not before the block ends
    p.feed('\n')
    expect(p.lastEventId).toBe('9')
  })

  it('drops a half-received event when the stream ends, keeping the committed id', () => {
    const p = new SseParser('3')
    expect(p.feed('id: 4\ndata: half')).toEqual([])
    p.end()
    expect(p.lastEventId).toBe('3')
    expect(p.feed('data: next\n\n')).toEqual([{ event: 'message', data: 'next', id: '3' }])
  })

  it('takes retry advice only when it is all digits', () => {
    const p = new SseParser()
    p.feed('retry: 2500\n\n')
    expect(p.retry).toBe(2500)
    p.feed('retry: 1e3\nretry: -5\nretry:\n\n')
    expect(p.retry).toBe(2500)
  })

  it('drops one BOM at the very start only', () => {
    const p = new SseParser()
    expect(p.feed('\ufeffdata: a\n\n')[0].data).toBe('a')
    expect(p.feed('\ufeffdata: b\n\n')).toEqual([]) // later, "\ufeffdata" is an unknown field
  })

  it('takes a value without a space after the colon, and only one space off', () => {
    const p = new SseParser()
    expect(p.feed('event:stats\ndata:  two spaces\n\n')).toEqual([{ event: 'stats', data: ' two spaces', id: '' }])
  })
})

describe('backoffDelay', () => {
  it('doubles from the base, caps at the max, jitters down by at most a quarter', () => {
    const none = () => 0
    expect([1, 2, 3, 4, 5, 6, 7].map((n) => backoffDelay(n, 1000, 30_000, none))).toEqual(
      [1000, 2000, 4000, 8000, 16000, 30000, 30000])
    expect(backoffDelay(3, 1000, 30_000, () => 1)).toBe(3000)
    expect(backoffDelay(0, 500, 30_000, none)).toBe(500)
    expect(backoffDelay(1e9, 500, 30_000, none)).toBe(30_000)
  })
})

function stats(over: Partial<LiveStats> = {}): LiveStats {
  return {
    at: '2026-11-11T00:00:01Z', seconds: 1, accepted: 0, accepted_per_s: 0, refused: {}, refused_per_s: {},
    p50_ms: null, p99_ms: null, in_flight: 0, writer_lag: 0, writer_pending: 0, stream_length: 0, hot: [], ...over,
  }
}

describe('the board', () => {
  it('sums accepted and refusals since it opened and keeps a capped history', () => {
    const b = emptyBoard()
    applyStats(b, stats({ accepted: 3, accepted_per_s: 3 }), 3)
    applyStats(b, stats({ accepted: 5, accepted_per_s: 5, refused: { insufficient_stock: 2 }, refused_per_s: { insufficient_stock: 2 } }), 3)
    applyStats(b, stats({ accepted: 1, accepted_per_s: 1, refused: { rate_limited: 4 }, refused_per_s: { rate_limited: 4 } }), 3)
    applyStats(b, stats({ accepted: 2, accepted_per_s: 2, p99_ms: 12 }), 3)
    expect(b.acceptedTotal).toBe(11)
    expect(b.ticks).toBe(4)
    expect(b.series.accepted).toEqual([5, 1, 2])
    expect(b.series.refused).toEqual([2, 4, 0])
    expect(b.series.p99).toEqual([0, 0, 12])
    expect(b.refusedTotal).toEqual({ insufficient_stock: 2, rate_limited: 4 })
    // a code's line is aligned with the others: zeros before it appeared and after it stopped
    expect(b.refusedSeries.rate_limited).toEqual([0, 4, 0])
    expect(refusalRows(b).map((r) => [r.code, r.total])).toEqual([['rate_limited', 4], ['insufficient_stock', 2]])
  })

  it('lists stock alerts newest first, each feed id once', () => {
    const b = emptyBoard()
    const alert = (id: number) => ({ id, type: 'inventory.low_stock' as const, sku: 'A', available: 2, at: '2026-11-11T00:00:00Z' })
    applyStock(b, alert(3))
    applyStock(b, alert(5))
    applyStock(b, alert(3)) // resent after a reconnect
    applyStock(b, alert(4))
    expect(b.alerts.map((a) => a.id)).toEqual([5, 4, 3])
    for (let id = 10; id < 20; id++) applyStock(b, alert(id), 4)
    expect(b.alerts.map((a) => a.id)).toEqual([19, 18, 17, 16])
  })

  it('reads messages by event name and counts what it cannot read', () => {
    const b = emptyBoard()
    expect(applyMessage(b, { event: 'stats', data: JSON.stringify(stats({ accepted: 2 })), id: '' })).toBe(true)
    expect(applyMessage(b, { event: 'stock', data: '{"id":1,"type":"inventory.sold_out","sku":"A","available":0,"at":"x"}', id: '1' })).toBe(true)
    expect(applyMessage(b, { event: 'message', data: '{}', id: '' })).toBe(false)
    expect(applyMessage(b, { event: 'stats', data: '{nope', id: '' })).toBe(false)
    expect(applyMessage(b, { event: 'stats', data: 'null', id: '' })).toBe(false)
    expect([b.acceptedTotal, b.alerts.length, b.bad]).toEqual([2, 1, 2])
  })
})

describe('formats', () => {
  it('shows rates, latencies and sell-out times', () => {
    expect([formatRate(0), formatRate(0.333), formatRate(12.345), formatRate(1204.4), formatRate(null)])
      .toEqual(['0', '0.33', '12.3', '1,204', '—'])
    expect([formatMs(4.24), formatMs(123.6), formatMs(null)]).toEqual(['4.2 ms', '124 ms', '—'])
    const now = new Date('2026-11-11T00:00:00Z')
    const hot = (available: number, eta: string | null) => ({ sku: 'A', available, sales_per_minute: 1, sell_out_eta: eta })
    expect(formatEta(hot(0, null), now)).toBe('sold out')
    expect(formatEta(hot(5, null), now)).toBe('not selling')
    expect(formatEta(hot(5, '2026-11-11T00:00:42Z'), now)).toBe('in 42 s')
    expect(formatEta(hot(5, '2026-11-11T00:04:10Z'), now)).toBe('in 4 min')
    expect(formatEta(hot(5, '2026-11-11T03:00:00Z'), now)).toBe('in 3.0 h')
  })
})

// ---- the connection, against a fake fetch ----

function streamOf(chunks: string[]): ReadableStream<Uint8Array> {
  const enc = new TextEncoder()
  return new ReadableStream({
    start(controller) {
      for (const c of chunks) controller.enqueue(enc.encode(c))
      controller.close()
    },
  })
}

afterEach(() => {
  vi.useRealTimers()
})

describe('LiveStream', () => {
  it('sends the bearer, resumes with Last-Event-ID after a drop, and backs off by the retry advice', async () => {
    vi.useFakeTimers()
    const calls: Record<string, string>[] = []
    const bodies = [
      ['retry: 50\n\n', 'event: stock\nid: 11\ndata: {"id":11}\n\n', 'event: stats\ndata: {}\n\n'],
      ['event: stats\ndata: {}\n\n'],
    ]
    const fetch = vi.fn(async (_url: string, init: RequestInit) => {
      calls.push({ ...(init.headers as Record<string, string>) })
      const body = bodies.shift()
      if (!body) return new Response('{"code":"overloaded","detail":"busy"}', { status: 503, headers: { 'content-type': 'application/problem+json' } })
      return new Response(streamOf(body), { status: 200, headers: { 'content-type': 'text/event-stream' } })
    })
    const messages: SseMessage[] = []
    const statuses: StreamStatus[] = []
    const s = new LiveStream({
      path: '/v1/stats/stream', token: () => 'k-ops', fetch: fetch as unknown as typeof globalThis.fetch,
      onMessage: (m) => messages.push(m), onStatus: (st) => statuses.push(st),
    })
    s.start()
    await vi.advanceTimersByTimeAsync(0)
    expect(calls[0]).toMatchObject({ Authorization: 'Bearer k-ops', Accept: 'text/event-stream' })
    expect(calls[0]['Last-Event-ID']).toBeUndefined()
    await vi.advanceTimersByTimeAsync(60) // first reconnect waits ~50 ms (the retry advice)
    expect(calls[1]['Last-Event-ID']).toBe('11')
    await vi.advanceTimersByTimeAsync(60) // the stream ended again: a 503 next
    await vi.advanceTimersByTimeAsync(200)
    expect(messages.map((m) => m.event)).toEqual(['stock', 'stats', 'stats'])
    const last = statuses[statuses.length - 1]
    expect(last.state).toBe('reconnecting')
    expect(last.reason).toContain('overloaded')
    expect(statuses.some((st) => st.state === 'open')).toBe(true)
    s.stop()
    expect(statuses[statuses.length - 1].state).toBe('closed')
    const n = fetch.mock.calls.length
    await vi.advanceTimersByTimeAsync(10_000)
    expect(fetch.mock.calls.length).toBe(n) // stopped means stopped
  })

  it('gives up on a refusal that will not heal (403), saying why', async () => {
    const fetch = vi.fn(async () => new Response('{"code":"forbidden","detail":"Not for this key"}',
      { status: 403, headers: { 'content-type': 'application/problem+json' } }))
    const statuses: StreamStatus[] = []
    const s = new LiveStream({ path: '/x', token: () => null, fetch: fetch as unknown as typeof globalThis.fetch,
      onMessage: () => undefined, onStatus: (st) => statuses.push(st) })
    s.start()
    await vi.waitFor(() => expect(statuses[statuses.length - 1].state).toBe('refused'))
    expect(statuses[statuses.length - 1].reason).toBe('Not for this key (forbidden)')
    expect(statuses[statuses.length - 1].httpStatus).toBe(403)
    expect(fetch).toHaveBeenCalledTimes(1)
  })
})
