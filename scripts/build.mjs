#!/usr/bin/env node
// `npm run build`: the TypeScript build, marked current so that the next set-up does not build again.
// Under the set-up's lock, so that it never overlaps a build started by `npm start` and the like.
import { build } from './lib/build.mjs';
import { root, withSetupLock } from './lib/setup.mjs';

await withSetupLock(() => build(root));
