// The gateway's API as the console calls it: a bearer on every call, problem+json errors as
// ApiError (its `detail` is what the screens show), and the response shapes the screens read.
// The bearer is only ever sent in the Authorization header: never in a URL, never logged.

export type Role = 'admin' | 'ops' | 'payments' | 'storefront' | 'user'
export const CHANNELS = ['web', 'app', 'store', 'api', 'marketplace'] as const
export const STATUSES = ['pending_payment', 'paid', 'shipped', 'completed', 'cancelled', 'refunding', 'refunded'] as const
export const STRATEGIES = ['priority', 'region', 'max_stock'] as const
export type Channel = (typeof CHANNELS)[number]
export type Status = (typeof STATUSES)[number]

export interface Whoami { role: Role; channel?: string; user_id?: string }
export interface Item { sku: string; qty: number; unit_price?: number }
export interface Allocation { sku: string; warehouse: string; qty: number }
export interface Order {
  order_id: string
  status: Status
  user_id: string
  channel: string
  sale_id: string | null
  items: Item[]
  allocations: Allocation[]
  reserved_until: string
  created_at: string
  ship_to?: { region?: string }
  currency?: string
  total?: number | null
  payment_id?: string | null
  cancel_reason?: string | null
  shipment?: { carrier?: string; tracking?: string } | null
  refund?: { reason?: string; amount?: number } | null
}
export interface OrderList { orders: Order[]; next: string | null }
export interface OrderEvent { seq: number; type: string; at: string; data: unknown }
export interface WarehouseStock { on_hand: number; reserved: number; available: number; active?: false }
export interface InventoryView {
  sku: string
  warehouses: Record<string, WarehouseStock>
  on_hand: number
  reserved: number
  available: number
  sales_per_minute?: number | null
  sell_out_eta?: string | null
}
export interface InventoryList { skus: InventoryView[]; next: string | null }
export interface Movement {
  id: number
  warehouse: string
  delta: number
  on_hand_after: number
  reason: string
  order_id: string | null
  at: string
}
export interface Warehouse { warehouse_id: string; region: string | null; priority: number; active: boolean }
export interface Sale {
  sale_id: string
  skus: string[]
  starts_at: string
  ends_at: string
  per_user_limit: number
  sold: number
  remaining: number
  channels?: string[]
  reservation_ttl?: number
  strategy?: string
  prices?: Record<string, number>
  currency?: string
}
export interface SaleIn {
  skus: string[]
  starts_at: string
  ends_at: string
  per_user_limit: number
  channels?: string[]
  reservation_ttl?: number
  strategy?: string
  prices?: Record<string, number>
  currency?: string
}

/** A refusal or failure, from the API's problem+json when it sent one. */
export class ApiError extends Error {
  readonly status: number
  readonly code: string
  readonly detail: string
  readonly title: string

  constructor(status: number, code: string, detail: string, title = '') {
    super(detail || title || `HTTP ${status}`)
    this.name = 'ApiError'
    this.status = status
    this.code = code
    this.detail = detail
    this.title = title
  }

  /** What a screen shows: the API's own words, then its code. */
  get plain(): string {
    const words = this.detail || this.title || `HTTP ${this.status}`
    return this.code ? `${words} (${this.code})` : words
  }
}

export type Query = Record<string, string | number | boolean | null | undefined>

/** `?a=1&b=x` of the values given; empty and missing values are left out. */
export function queryString(query?: Query): string {
  if (!query) return ''
  const params = new URLSearchParams()
  for (const [name, value] of Object.entries(query)) {
    if (value !== undefined && value !== null && value !== '') params.append(name, String(value))
  }
  const text = params.toString()
  return text ? `?${text}` : ''
}

/** One path segment: escaped, and a segment of dots (a valid order id) kept from meaning "up". */
export function seg(value: string): string {
  const escaped = encodeURIComponent(value)
  return /^\.+$/.test(value) ? escaped.replace(/\./g, '%2E') : escaped
}

/** The ApiError a failed response stands for: its problem+json members, or its status alone. */
export async function problemOf(resp: Response): Promise<ApiError> {
  const type = resp.headers.get('content-type') ?? ''
  let body: unknown = null
  try {
    body = type.includes('json') ? await resp.json() : await resp.text()
  } catch {
    body = null
  }
  if (body && typeof body === 'object' && !Array.isArray(body)) {
    const p = body as Record<string, unknown>
    const text = (v: unknown) => (typeof v === 'string' ? v : '')
    return new ApiError(resp.status, text(p.code), text(p.detail), text(p.title))
  }
  const text = typeof body === 'string' ? body.trim().slice(0, 200) : ''
  return new ApiError(resp.status, '', text || resp.statusText || `HTTP ${resp.status}`)
}

export interface ClientOptions {
  token: () => string | null
  fetch?: typeof fetch
  base?: string
  onUnauthorized?: (err: ApiError) => void
}

interface Call { query?: Query; body?: unknown; signal?: AbortSignal }

export class Api {
  private readonly opts: ClientOptions

  constructor(opts: ClientOptions) {
    this.opts = opts
  }

  private headers(json: boolean, accept = 'application/json'): Record<string, string> {
    const headers: Record<string, string> = { Accept: accept }
    if (json) headers['Content-Type'] = 'application/json'
    const token = this.opts.token()
    if (token) headers.Authorization = `Bearer ${token}`
    return headers
  }

  private async send(method: string, path: string, call: Call, accept?: string): Promise<Response> {
    const init: RequestInit = {
      method,
      headers: this.headers(call.body !== undefined, accept),
      cache: 'no-store',
      credentials: 'omit',
      signal: call.signal,
    }
    if (call.body !== undefined) init.body = JSON.stringify(call.body)
    const doFetch = this.opts.fetch ?? globalThis.fetch.bind(globalThis)
    let resp: Response
    try {
      resp = await doFetch(`${this.opts.base ?? ''}${path}${queryString(call.query)}`, init)
    } catch (err) {
      if (err instanceof DOMException && err.name === 'AbortError') throw err
      throw new ApiError(0, 'network_error', 'The gateway did not answer; is it running?')
    }
    if (!resp.ok) {
      const err = await problemOf(resp)
      if (err.status === 401) this.opts.onUnauthorized?.(err)
      throw err
    }
    return resp
  }

  async request<T>(method: string, path: string, call: Call = {}): Promise<T> {
    const resp = await this.send(method, path, call)
    if (resp.status === 204) return undefined as T
    return (await resp.json()) as T
  }

  get<T>(path: string, query?: Query, signal?: AbortSignal): Promise<T> {
    return this.request<T>('GET', path, { query, signal })
  }

  put<T>(path: string, body: unknown): Promise<T> {
    return this.request<T>('PUT', path, { body })
  }

  post<T>(path: string, body?: unknown): Promise<T> {
    return this.request<T>('POST', path, { body: body ?? {} })
  }

  /** A file (a CSV export) fetched with the bearer, for the page to save as a blob. */
  async download(path: string, query?: Query): Promise<Blob> {
    return await (await this.send('GET', path, { query }, 'text/csv, */*')).blob()
  }

  // The routes the screens use.
  whoami = () => this.get<Whoami>('/v1/whoami')
  orders = (query: Query) => this.get<OrderList>('/v1/orders', query)
  order = (id: string) => this.get<Order>(`/v1/orders/${seg(id)}`)
  orderEvents = (id: string) => this.get<{ events: OrderEvent[] }>(`/v1/orders/${seg(id)}/events`)
  transition = (id: string, action: string, body: unknown) => this.post<Order>(`/v1/orders/${seg(id)}/${action}`, body)
  inventoryList = (query: Query) => this.get<InventoryList>('/v1/inventory', query)
  inventory = (sku: string) => this.get<InventoryView>(`/v1/inventory/${seg(sku)}`)
  setInventory = (sku: string, warehouses: Record<string, number>) =>
    this.put<InventoryView>(`/v1/inventory/${seg(sku)}`, { warehouses })
  adjustInventory = (sku: string, warehouse: string, delta: number, reason: string) =>
    this.post<InventoryView>(`/v1/inventory/${seg(sku)}/adjust`, { warehouse, delta, reason })
  movements = (sku: string, query: Query) =>
    this.get<{ movements: Movement[]; next: string | null }>(`/v1/inventory/${seg(sku)}/movements`, query)
  warehouses = () => this.get<{ warehouses: Warehouse[] }>('/v1/warehouses')
  putWarehouse = (id: string, body: { region: string | null; priority: number; active: boolean }) =>
    this.put<Warehouse>(`/v1/warehouses/${seg(id)}`, body)
  sales = () => this.get<{ sales: Sale[] }>('/v1/sales')
  sale = (id: string) => this.get<Sale>(`/v1/sales/${seg(id)}`)
  putSale = (id: string, body: SaleIn) => this.put<Sale>(`/v1/sales/${seg(id)}`, body)
}
