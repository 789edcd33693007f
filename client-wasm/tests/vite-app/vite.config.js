import { defineConfig } from "vite";

export default defineConfig({
  // `vite dev` pre-bundles dependencies, which moves the package's .wasm away from the
  // module that loads it; excluding the package keeps `new URL(..., import.meta.url)` right.
  optimizeDeps: { exclude: ["@taskpulse/client"] },
  build: { outDir: "dist", emptyOutDir: true },
});
