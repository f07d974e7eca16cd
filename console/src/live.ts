// The live board's stream: GET /v1/stats/stream read with fetch (EventSource cannot send the
// Authorization header), parsed as server-sent events, reconnected with backoff and Last-Event-ID,
// and folded into the board's figures. Everything here but LiveStream.run is pure, for Vitest.
import { problemOf, type ApiError } from './api'

// ---- server-sent events (the HTML standard's "event stream interpretation") ----

export interface SseMessage {
  event: string // "message" when the stream named none
  data: string // the data lines joined by "\n"
  id: string // the last event id in force when it was dispatched ("" for none yet)
}

/** Feed text chunks (split anywhere, even between \r and \n), get whole events. Tracks the last
 * event id and the server's `retry:` advice the way a browser's EventSource does. */
export class SseParser {
  lastEventId = '' // set when an event is dispatched (a blank line), as EventSource's is
  retry: number | null = null
  private idBuffer = ''
  private buffer = ''
  private data: string[] = []
  private event = ''
  private started = false
  private skipLf = false // the chunk before ended in \r: a \n opening this one is the same line end

  constructor(lastEventId = '') {
    this.lastEventId = lastEventId
    this.idBuffer = lastEventId
  }

  feed(chunk: string): SseMessage[] {
    if (!this.started && chunk.length) {
      this.started = true
      if (chunk.charCodeAt(0) === 0xfeff) chunk = chunk.slice(1) // one BOM at the very start
    }
    if (this.skipLf && chunk.length) {
      this.skipLf = false
      if (chunk[0] === '\n') chunk = chunk.slice(1)
    }
    this.buffer += chunk
    const out: SseMessage[] = []
    let start = 0
    for (;;) {
      const cr = this.buffer.indexOf('\r', start)
      const lf = this.buffer.indexOf('\n', start)
      if (cr < 0 && lf < 0) break
      let end: number
      let next: number
      if (lf >= 0 && (cr < 0 || lf < cr)) {
        end = lf
        next = lf + 1
      } else if (cr + 1 < this.buffer.length) {
        end = cr
        next = this.buffer[cr + 1] === '\n' ? cr + 2 : cr + 1
      } else { // \r is the last character: the line ended; a \n may open the next chunk
        end = cr
        next = cr + 1
        this.skipLf = true
      }
      this.line(this.buffer.slice(start, end), out)
      start = next
    }
    this.buffer = this.buffer.slice(start)
    return out
  }

  /** The stream ended: a half-received event is dropped, as the standard says. */
  end(): void {
    this.idBuffer = this.lastEventId
    this.buffer = ''
    this.data = []
    this.event = ''
    this.skipLf = false
  }

  private line(line: string, out: SseMessage[]): void {
    if (line === '') {
      this.lastEventId = this.idBuffer
      if (this.data.length) out.push({ event: this.event || 'message', data: this.data.join('\n'), id: this.lastEventId })
      this.data = []
      this.event = ''
      return
    }
    if (line[0] === ':') return // a comment (aiohttp-sse's pings are these)
    const colon = line.indexOf(':')
    const field = colon < 0 ? line : line.slice(0, colon)
    let value = colon < 0 ? '' : line.slice(colon + 1)
    if (value[0] === ' ') value = value.slice(1)
    switch (field) {
      case 'data': this.data.push(value); break
      case 'event': this.event = value; break
      case 'id': if (!value.includes('\0')) this.idBuffer = value; break
      case 'retry': if (/^\d+$/.test(value)) this.retry = Number(value); break
      default: break // unknown fields are ignored
    }
  }
}

// ---- reconnecting ----

/** How long to wait before reconnect ``attempt`` (1, 2, …): the server's retry advice (or ``base``)
 * doubled per failed attempt, capped at ``max``, with up to 25 % jitter off so tabs spread out. */
export function backoffDelay(attempt: number, base = 1000, max = 30_000, random: () => number = Math.random): number {
  const n = Math.max(1, Math.floor(attempt))
  const raw = Math.min(max, base * 2 ** Math.min(n - 1, 20))
  return Math.round(raw * (1 - 0.25 * random()))
}

export type ConnState = 'connecting' | 'open' | 'reconnecting' | 'refused' | 'closed'

export interface StreamStatus {
  state: ConnState
  attempt: number // reconnects since the last good event
  retryIn: number | null // ms until the next try, while reconnecting
  reason: string // why the last connection ended ("" when none did)
  httpStatus?: number // the gateway's refusal, when it refused
}

export interface StreamOptions {
  path: string // with its query, e.g. /v1/stats/stream?interval=1
  token: () => string | null
  onMessage: (message: SseMessage) => void
  onStatus: (status: StreamStatus) => void
  fetch?: typeof fetch
  stallMs?: number // no byte for this long (pings included): the connection is presumed dead
  baseDelay?: number
  maxDelay?: number
}

// 401 and 403 will not heal by themselves; 422 is a bad query. Anything else (503 while a store
// is down, a proxy's 502, the network) is worth another try.
const FINAL = new Set([400, 401, 403, 404, 422])

/** One board's connection: ``start()`` keeps it open until ``stop()``. */
export class LiveStream {
  private readonly opts: StreamOptions
  private controller: AbortController | null = null
  private stopped = true
  private generation = 0 // a stop() then start() must not leave the old loop running
  private lastEventId = ''
  private retry: number | null = null

  constructor(opts: StreamOptions) {
    this.opts = opts
  }

  start(): void {
    if (!this.stopped) return
    this.stopped = false
    void this.run(++this.generation)
  }

  stop(): void {
    this.stopped = true
    this.controller?.abort()
    this.opts.onStatus({ state: 'closed', attempt: 0, retryIn: null, reason: '' })
  }

  private status(state: ConnState, attempt: number, reason = '', retryIn: number | null = null, httpStatus?: number): void {
    if (!this.stopped) this.opts.onStatus({ state, attempt, retryIn, reason, ...(httpStatus ? { httpStatus } : {}) })
  }

  private async run(generation: number): Promise<void> {
    let attempt = 0
    const current = () => !this.stopped && generation === this.generation
    while (current()) {
      this.status(attempt ? 'reconnecting' : 'connecting', attempt)
      let reason: string
      try {
        const gotEvents = await this.once(attempt)
        if (gotEvents) attempt = 0
        reason = 'the stream ended'
      } catch (err) {
        if (!current()) return
        const api = err as Partial<ApiError>
        if (typeof api.status === 'number' && FINAL.has(api.status)) {
          this.status('refused', attempt, api.plain ?? String(err), null, api.status)
          this.stopped = true
          return
        }
        reason = api.plain ?? (err instanceof Error ? err.message : String(err))
      }
      if (!current()) return
      attempt += 1
      const delay = backoffDelay(attempt, this.retry ?? this.opts.baseDelay ?? 1000, this.opts.maxDelay ?? 30_000)
      this.status('reconnecting', attempt, reason, delay)
      await new Promise((resolve) => setTimeout(resolve, delay))
    }
  }

  /** One connection, until it ends; true when at least one event came. Throws what refused it. */
  private async once(attempt: number): Promise<boolean> {
    const controller = new AbortController()
    this.controller = controller
    const headers: Record<string, string> = { Accept: 'text/event-stream' }
    const token = this.opts.token()
    if (token) headers.Authorization = `Bearer ${token}`
    if (this.lastEventId) headers['Last-Event-ID'] = this.lastEventId
    const doFetch = this.opts.fetch ?? globalThis.fetch.bind(globalThis)
    let stall: ReturnType<typeof setTimeout> | undefined
    const arm = () => {
      clearTimeout(stall)
      stall = setTimeout(() => controller.abort(), this.opts.stallMs ?? 20_000)
    }
    arm()
    let got = false
    try {
      const resp = await doFetch(this.opts.path, { headers, cache: 'no-store', credentials: 'omit', signal: controller.signal })
      if (!resp.ok) throw await problemOf(resp)
      if (!resp.body) throw new Error('the gateway sent no stream')
      this.status('open', attempt)
      const parser = new SseParser(this.lastEventId)
      const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader()
      try {
        for (;;) {
          const { value, done } = await reader.read()
          if (done) break
          arm()
          for (const message of parser.feed(value)) {
            got = true
            this.opts.onMessage(message)
          }
          this.lastEventId = parser.lastEventId
          if (parser.retry !== null) this.retry = parser.retry
        }
      } finally {
        parser.end()
        reader.cancel().catch(() => undefined)
      }
    } catch (err) {
      if (controller.signal.aborted && !this.stopped) throw new Error('no data for a while; reconnecting')
      throw err
    } finally {
      clearTimeout(stall)
      controller.abort()
    }
    return got
  }
}

// ---- the board's figures ----

export interface HotSku { sku: string; available: number; sales_per_minute: number; sell_out_eta: string | null }
export interface LiveStats {
  at: string
  seconds: number
  accepted: number
  accepted_per_s: number
  refused: Record<string, number>
  refused_per_s: Record<string, number>
  p50_ms: number | null
  p99_ms: number | null
  in_flight: number
  writer_lag: number | null
  writer_pending: number | null
  stream_length: number | null
  hot: HotSku[]
  unavailable?: string[]
}
export interface StockAlert { id: number; type: 'inventory.low_stock' | 'inventory.sold_out'; sku: string; available: number; at: string }

export interface Board {
  last: LiveStats | null
  ticks: number
  acceptedTotal: number // since the board opened
  refusedTotal: Record<string, number> // by code, since the board opened
  series: { accepted: number[]; refused: number[]; p50: number[]; p99: number[]; inFlight: number[]; lag: number[] }
  refusedSeries: Record<string, number[]> // refusals per second by code
  alerts: StockAlert[] // newest first
  bad: number // events that could not be read
}

export const HISTORY = 60 // ticks kept for the charts
export const ALERTS = 50

export function emptyBoard(): Board {
  return {
    last: null, ticks: 0, acceptedTotal: 0, refusedTotal: {},
    series: { accepted: [], refused: [], p50: [], p99: [], inFlight: [], lag: [] },
    refusedSeries: {}, alerts: [], bad: 0,
  }
}

function push(series: number[], value: number, cap: number): void {
  series.push(value)
  if (series.length > cap) series.splice(0, series.length - cap)
}

function num(v: unknown): number {
  return typeof v === 'number' && Number.isFinite(v) ? v : 0
}

/** Fold one `stats` event into the board (in place; returns it). */
export function applyStats(board: Board, stats: LiveStats, cap = HISTORY): Board {
  board.last = stats
  board.ticks += 1
  board.acceptedTotal += num(stats.accepted)
  const codes = new Set([...Object.keys(board.refusedSeries), ...Object.keys(stats.refused_per_s ?? {})])
  for (const [code, n] of Object.entries(stats.refused ?? {})) board.refusedTotal[code] = (board.refusedTotal[code] ?? 0) + num(n)
  for (const code of codes) {
    // a code not seen this tick had none: its line drops to 0 rather than stopping
    const series = board.refusedSeries[code] ?? (board.refusedSeries[code] = new Array(board.series.accepted.length).fill(0))
    push(series, num(stats.refused_per_s?.[code]), cap)
  }
  push(board.series.accepted, num(stats.accepted_per_s), cap)
  push(board.series.refused, totalRefusedPerSecond(stats), cap)
  push(board.series.p50, num(stats.p50_ms), cap)
  push(board.series.p99, num(stats.p99_ms), cap)
  push(board.series.inFlight, num(stats.in_flight), cap)
  push(board.series.lag, num(stats.writer_lag), cap)
  return board
}

/** Fold one `stock` event in: newest first, each feed id once (a reconnect may resend one). */
export function applyStock(board: Board, alert: StockAlert, cap = ALERTS): Board {
  if (board.alerts.some((a) => a.id === alert.id)) return board
  board.alerts.unshift(alert)
  board.alerts.sort((a, b) => b.id - a.id)
  if (board.alerts.length > cap) board.alerts.length = cap
  return board
}

/** Read one message of the stream into the board; false when it was not one the board knows. */
export function applyMessage(board: Board, message: SseMessage): boolean {
  if (message.event !== 'stats' && message.event !== 'stock') return false
  let data: unknown
  try {
    data = JSON.parse(message.data)
  } catch {
    board.bad += 1
    return false
  }
  if (!data || typeof data !== 'object') {
    board.bad += 1
    return false
  }
  if (message.event === 'stats') applyStats(board, data as LiveStats)
  else applyStock(board, data as StockAlert)
  return true
}

export function totalRefusedPerSecond(stats: LiveStats): number {
  return Object.values(stats.refused_per_s ?? {}).reduce((sum, n) => sum + num(n), 0)
}

/** The refusal codes, most refused since the board opened first. */
export function refusalRows(board: Board): { code: string; perSecond: number; total: number; series: number[] }[] {
  return Object.keys(board.refusedSeries)
    .map((code) => ({
      code,
      perSecond: num(board.last?.refused_per_s?.[code]),
      total: board.refusedTotal[code] ?? 0,
      series: board.refusedSeries[code],
    }))
    .sort((a, b) => b.total - a.total || a.code.localeCompare(b.code))
}

/** "12.5", "0.33", "1,204": a rate with the digits worth reading. */
export function formatRate(n: number | null | undefined): string {
  if (n === null || n === undefined || !Number.isFinite(n)) return '—'
  const digits = n === 0 || Math.abs(n) >= 100 ? 0 : Math.abs(n) >= 10 ? 1 : 2
  return n.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: 0 })
}

/** "4.2 ms"; "—" for none (no orders in that tick). */
export function formatMs(n: number | null | undefined): string {
  if (n === null || n === undefined || !Number.isFinite(n)) return '—'
  return `${n < 10 ? n.toFixed(1) : Math.round(n).toLocaleString('en-US')} ms`
}

/** When a hot SKU sells out: "sold out", "in 4 min", or "not selling" when nothing moves. */
export function formatEta(hot: HotSku, now: Date = new Date()): string {
  if (hot.available <= 0) return 'sold out'
  if (!hot.sell_out_eta) return 'not selling'
  const t = new Date(hot.sell_out_eta).getTime()
  if (Number.isNaN(t)) return hot.sell_out_eta
  const seconds = Math.max(0, Math.round((t - now.getTime()) / 1000))
  if (seconds < 60) return `in ${seconds} s`
  if (seconds < 3600) return `in ${Math.round(seconds / 60)} min`
  if (seconds < 86400) return `in ${(seconds / 3600).toFixed(1)} h`
  return `in ${Math.round(seconds / 86400)} d`
}

export const STATE_LABELS: Record<ConnState, string> = {
  connecting: 'connecting', open: 'live', reconnecting: 'reconnecting', refused: 'refused', closed: 'closed',
}
