// Nothing here about @taskpulse/client: the package needs no configuration, in `vite build`
// or `vite dev`. The plugins are the ones every React or Vue app has.
import { defineConfig } from "vite";
import react from "@vitejs/plugin-react";
import vue from "@vitejs/plugin-vue";

const pages = ["react-seed", "vue-seed", "react-hooks", "vue-composables"];

export default defineConfig({
  plugins: [react(), vue()],
  build: {
    outDir: "dist",
    emptyOutDir: true,
    rollupOptions: {
      input: { index: "index.html", ...Object.fromEntries(pages.map((page) => [page, `${page}/index.html`])) },
    },
  },
});
