// Who is signed in: the pasted key or token and what /v1/whoami said of it. Kept in
// sessionStorage only (gone when the tab closes), never in a URL, never logged.
import { reactive } from 'vue'

import { Api, ApiError, type Whoami } from './api'

const STORAGE_KEY = 'oms-console-session'

export interface Session { token: string; who: Whoami }

export const session = reactive<{ current: Session | null; expired: boolean }>({ current: restore(), expired: false })

function restore(): Session | null {
  try {
    const raw = globalThis.sessionStorage?.getItem(STORAGE_KEY)
    if (!raw) return null
    const parsed = JSON.parse(raw) as Session
    return typeof parsed?.token === 'string' && typeof parsed?.who?.role === 'string' ? parsed : null
  } catch {
    return null
  }
}

export const api = new Api({
  token: () => session.current?.token ?? null,
  onUnauthorized: () => {
    if (session.current) {
      signOut()
      session.expired = true
    }
  },
})

/** Ask the gateway who ``token`` is; keep it only if it answers. Throws the ApiError otherwise. */
export async function signIn(token: string): Promise<Whoami> {
  const trimmed = token.trim()
  if (!trimmed) throw new ApiError(0, '', 'Paste a service key or a user token.')
  const probe = new Api({ token: () => trimmed })
  const who = await probe.whoami()
  session.current = { token: trimmed, who }
  session.expired = false
  globalThis.sessionStorage?.setItem(STORAGE_KEY, JSON.stringify(session.current))
  return who
}

export function signOut(): void {
  session.current = null
  globalThis.sessionStorage?.removeItem(STORAGE_KEY)
}
