#!/usr/bin/env node
// The installed `aether` command (package.json "bin"). dist/ is not in git, so after `npm install -g .` on a
// fresh clone the first run installs the npm dependencies and builds (as `npm start` does); later runs find
// both current and go straight to the command. OS packages are left to `node scripts/setup.mjs` (as root).
import { setup } from './lib/setup.mjs';

await setup({ osPackages: false });
await import('../dist/cli/main.js');
