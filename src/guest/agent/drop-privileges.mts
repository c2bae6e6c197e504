/**
 * Firecracker guests only: preloaded (`node --import drop-privileges.mjs main.mjs`) by the init,
 * which has to start node as root (busybox cannot switch uid). Drops to AETHER_UID before the agent
 * runs, so the function never runs as root in the guest. (QEMU guests do this in listen-mode.mts.)
 */
import { fail } from './log.mjs';
import { AGENT_ENV, EXIT_CONFIG } from './protocol.mjs';

const uid = Number(process.env[AGENT_ENV.uid]);
if (!Number.isInteger(uid) || uid <= 0) fail(`${AGENT_ENV.uid} must be a non-root uid`, EXIT_CONFIG);
// POSIX-only APIs: the guest is Linux.
process.setgroups!([]);
process.setgid!(uid);
process.setuid!(uid);
