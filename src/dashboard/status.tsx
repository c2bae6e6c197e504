/** What state a function is in, from its record and its instances: one word and a badge. */
import type { FunctionView, InstanceInfo } from './api.js';

export type Health = 'failing' | 'no code' | 'ready' | 'starting' | 'scaled to zero';

export function health(fn: FunctionView, instances: InstanceInfo[] | undefined): Health | undefined {
  if (fn.status === 'failing') return 'failing';
  if (!fn.code_hash) return 'no code';
  if (!instances) return undefined;
  if (instances.some((i) => i.state === 'ready')) return 'ready';
  if (instances.some((i) => i.state === 'starting')) return 'starting';
  return 'scaled to zero';
}

export function StatusBadge({ fn, instances }: { fn: FunctionView; instances: InstanceInfo[] | undefined }) {
  const h = health(fn, instances);
  if (!h) return <span class="badge">…</span>;
  return (
    <span class={`badge ${h.replaceAll(' ', '-')}`} title={h === 'failing' ? (fn.last_error ?? undefined) : undefined}>
      {h}
    </span>
  );
}

/** Ready instances now (the others are starting or on their way out). */
export const readyCount = (instances: InstanceInfo[] | undefined) => instances?.filter((i) => i.state === 'ready').length;
