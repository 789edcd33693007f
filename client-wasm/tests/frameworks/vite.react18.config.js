// The React pages again, against React 18 (the npm aliases react-18 and react-dom-18): the
// seed's component and the package's React adapter must work on both majors the adapter
// supports. Every import of react or react-dom, the package's too, resolves to 18 here.
import { defineConfig } from "vite";
import react from "@vitejs/plugin-react";

export default defineConfig({
  base: "/react18/",
  plugins: [react()],
  resolve: {
    alias: [
      { find: /^react-dom(\/.*)?$/, replacement: "react-dom-18$1" },
      { find: /^react(\/.*)?$/, replacement: "react-18$1" },
    ],
  },
  build: {
    outDir: "dist/react18",
    emptyOutDir: true,
    rollupOptions: {
      input: { "react-seed": "react-seed/index.html", "react-hooks": "react-hooks/index.html" },
    },
  },
});
