// A lock between processes of one checkout, so that set-up steps (npm ci, apt, the build) never run twice at
// once: `npm run gateway` and `npm run worker` started together must not both install or build.
// The lock is a file holding its holder's pid and start time. A holder that died (killed mid-install) leaves
// it behind; the next process sees the pid gone (or reused by another process) and removes it.
import fs from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';

const POLL_MS = 100;
const BREAKER_STALE_MS = 10_000;

/** The start time of a process in clock ticks since boot (Linux /proc), to tell a reused pid from its holder. */
function startTime(pid) {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Field 22; the fields after the command name (which may hold spaces) start at field 3.
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
  } catch {
    return undefined;
  }
}

function isAlive({ pid, started }) {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
  } catch (err) {
    if (err.code !== 'EPERM') return false; // EPERM: alive, another user's
  }
  const now = started && startTime(pid);
  return !now || now === started;
}

/** The holder recorded in the lock file and the file's inode, or undefined when there is no lock file. */
function readHolder(file) {
  let fd;
  try {
    fd = fs.openSync(file, 'r');
  } catch (err) {
    if (err.code === 'ENOENT') return undefined;
    throw err;
  }
  try {
    const { ino } = fs.fstatSync(fd);
    let holder;
    try {
      holder = JSON.parse(fs.readFileSync(fd, 'utf8'));
    } catch {
      holder = {}; // unreadable: nobody can be waited for
    }
    return { ino, holder };
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Removes a stale lock file, if it is still the one (same inode) found stale. Waiters that find it stale at
 * the same moment go through a short-lived breaker file, so that none of them removes a lock another has
 * just taken.
 */
function removeStale(file, ino) {
  const breaker = `${file}.break`;
  try {
    fs.writeFileSync(breaker, String(process.pid), { flag: 'wx' });
  } catch (err) {
    if (err.code !== 'EEXIST') throw err;
    // Held for microseconds; one left behind by a killed process is cleared after a while.
    if (Date.now() - fs.statSync(breaker, { throwIfNoEntry: false })?.mtimeMs > BREAKER_STALE_MS) fs.rmSync(breaker, { force: true });
    return false;
  }
  try {
    if (fs.statSync(file, { throwIfNoEntry: false })?.ino !== ino) return false;
    fs.unlinkSync(file);
    return true;
  } finally {
    fs.rmSync(breaker, { force: true });
  }
}

/**
 * Takes the lock at `file`, waiting while a live process holds it. Returns a function that releases it.
 * `say` reports waiting and stale-lock recovery; after `timeoutMs` of waiting it gives up with an error
 * naming the holder.
 */
export async function acquireLock(file, { say = () => {}, timeoutMs = 30 * 60_000 } = {}) {
  const mine = `${file}.${process.pid}`;
  fs.writeFileSync(mine, JSON.stringify({ pid: process.pid, started: startTime(process.pid) }));
  const waitedSince = Date.now();
  let reportedPid;
  try {
    for (;;) {
      try {
        fs.linkSync(mine, file); // atomic, and the lock never exists without its content
        const { ino } = fs.statSync(file);
        return () => {
          if (fs.statSync(file, { throwIfNoEntry: false })?.ino === ino) fs.unlinkSync(file);
        };
      } catch (err) {
        if (err.code !== 'EEXIST') throw err;
      }
      const found = readHolder(file);
      if (!found) continue;
      if (!isAlive(found.holder)) {
        if (removeStale(file, found.ino)) say(`removed a stale lock left by process ${found.holder.pid ?? '?'}, which is gone`);
        continue;
      }
      if (Date.now() - waitedSince > timeoutMs) {
        throw new Error(
          `process ${found.holder.pid} has held ${file} for over ${Math.round(timeoutMs / 60_000)} min; ` +
            'if it is stuck, stop it (the lock is then recovered)',
        );
      }
      if (reportedPid !== found.holder.pid) say(`waiting for process ${found.holder.pid}, which is setting up this checkout`);
      reportedPid = found.holder.pid;
      await sleep(POLL_MS);
    }
  } finally {
    fs.rmSync(mine, { force: true });
  }
}
