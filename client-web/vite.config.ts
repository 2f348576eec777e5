import react from "@vitejs/plugin-react";
import { defineConfig } from "vitest/config";

// `npm run dev` proxies the server's routes to a tidegate on :8080 (make run).
const SERVER = "http://127.0.0.1:8080";

export default defineConfig({
  plugins: [react()],
  build: { outDir: "dist", emptyOutDir: true, sourcemap: true },
  server: {
    proxy: {
      "/v1/control": { target: SERVER.replace("http", "ws"), ws: true },
      "/v1": SERVER,
    },
  },
  test: {
    include: ["src/**/*.test.ts"],
    environment: "node",
  },
});
