import vue from '@vitejs/plugin-vue'
import { defineConfig } from 'vitest/config'

// Served by the gateway at /console (gateway/web/console.py): hashed files under assets/,
// everything bundled (no CDN). `npm run dev` proxies the API to a gateway on :8080.
export default defineConfig({
  base: '/console/',
  plugins: [vue()],
  build: { outDir: 'dist', assetsDir: 'assets', emptyOutDir: true, chunkSizeWarningLimit: 400 },
  server: { proxy: { '/v1': 'http://127.0.0.1:8080' } },
  test: { environment: 'node', include: ['src/**/*.test.ts'] },
})
