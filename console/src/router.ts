// The console's pages under /console/. Every page but sign-in needs a session; a page the
// role has no entry for in its nav sends it home (the gateway would refuse its calls anyway).
import { createRouter, createWebHistory, type RouteRecordRaw } from 'vue-router'

import { canSee, homeOf, type Screen } from './nav'
import { session } from './session'

declare module 'vue-router' {
  interface RouteMeta { screen?: Screen; public?: boolean }
}

const routes: RouteRecordRaw[] = [
  { path: '/signin', name: 'signin', component: () => import('./views/SignInView.vue'), meta: { public: true } },
  { path: '/', name: 'home', redirect: () => homeOf(session.current?.who.role ?? 'user') },
  { path: '/orders', name: 'orders', component: () => import('./views/OrdersView.vue'), meta: { screen: 'orders' } },
  { path: '/orders/:orderId', name: 'order', component: () => import('./views/OrderView.vue'), props: true,
    meta: { screen: 'orders' } },
  { path: '/stock', name: 'stock', component: () => import('./views/StockView.vue'), meta: { screen: 'stock' } },
  { path: '/stock/:sku', name: 'sku', component: () => import('./views/SkuView.vue'), props: true,
    meta: { screen: 'stock' } },
  { path: '/sales', name: 'sales', component: () => import('./views/SalesView.vue'), meta: { screen: 'sales' } },
  { path: '/sales/new', name: 'sale-new', component: () => import('./views/SaleEditView.vue'), meta: { screen: 'sales' } },
  { path: '/sales/:saleId', name: 'sale', component: () => import('./views/SaleEditView.vue'), props: true,
    meta: { screen: 'sales' } },
  { path: '/finance', name: 'finance', component: () => import('./views/FinanceView.vue'), meta: { screen: 'finance' } },
  { path: '/live', name: 'live', component: () => import('./views/LiveView.vue'), meta: { screen: 'live' } },
  { path: '/health', name: 'health', component: () => import('./views/HealthView.vue'), meta: { screen: 'health' } },
  { path: '/:rest(.*)*', name: 'missing', component: () => import('./views/MissingView.vue') },
]

export const router = createRouter({ history: createWebHistory('/console/'), routes })

router.beforeEach((to) => {
  const current = session.current
  if (to.meta.public) return current && to.name === 'signin' ? homeOf(current.who.role) : true
  if (!current) return { name: 'signin', query: to.fullPath !== '/' ? { next: to.fullPath } : {} }
  if (to.meta.screen && !canSee(current.who.role, to.meta.screen)) return homeOf(current.who.role)
  return true
})
