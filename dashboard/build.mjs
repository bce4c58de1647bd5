// Bundles the dashboard into dist/ (what the REST shim serves at /ui/):
// dist/index.html, dist/assets/app.js, dist/assets/app.css. No source maps,
// no hashing (the shim answers with Cache-Control: no-cache).
import { build } from "esbuild";
import { copyFile, mkdir, rm } from "node:fs/promises";

const out = new URL("./dist/", import.meta.url);
await rm(out, { recursive: true, force: true });
await mkdir(new URL("assets/", out), { recursive: true });
await build({
  entryPoints: ["src/main.tsx"],
  bundle: true,
  minify: true,
  format: "esm",
  target: ["es2022"],
  jsx: "automatic",
  jsxImportSource: "preact",
  outfile: "dist/assets/app.js",
  logLevel: "warning",
  legalComments: "none",
});
await copyFile(new URL("./src/style.css", import.meta.url), new URL("assets/app.css", out));
await copyFile(new URL("./src/favicon.svg", import.meta.url), new URL("assets/favicon.svg", out));
await copyFile(new URL("./index.html", import.meta.url), new URL("index.html", out));
