/**
 * A microVM's agent may be a restored snapshot's: one node process, started in a template, copied into
 * every restore. The kernel's generator and OpenSSL's are reseeded by then (the VM's init), but V8
 * seeds Math.random from its own generator, cloned with the rest. So, before the function runs, the
 * first use of Math.random in this context is seeded from the CSPRNG; contexts created later seed as
 * they always do (the seed flag is reset at once: workers must not share it).
 */
import { randomInt } from 'node:crypto';
import { setFlagsFromString } from 'node:v8';

export function reseedMathRandom(): void {
  setFlagsFromString(`--random-seed=${randomInt(1, 2 ** 31)}`);
  Math.random();
  setFlagsFromString('--random-seed=0');
}
