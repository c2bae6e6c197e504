#!/usr/bin/env node
// `npm start`, `npm test` and the other npm scripts run this first: it installs and builds whatever is
// missing (npm dependencies, OS packages via apt when root, the build) and does nothing otherwise.
// Safe to run from several processes at once (see lib/setup.mjs).
import { setup } from './lib/setup.mjs';

await setup();
