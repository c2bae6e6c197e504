import type { Logger } from '../../core/ports.js';
import { errorMessage } from '../../core/errors.js';

/** Change listeners: one that throws is logged and does not keep the others from being told. */
export class Listeners<E> {
  private readonly fns = new Set<(ev: E) => void>();
  constructor(private readonly log: Logger) {}

  /** Returns the unsubscribe function. */
  add(fn: (ev: E) => void): () => void {
    this.fns.add(fn);
    return () => this.fns.delete(fn);
  }

  emit(ev: E): void {
    for (const fn of this.fns) {
      try {
        fn(ev);
      } catch (err) {
        this.log.error({ err: errorMessage(err) }, 'etcd change listener failed');
      }
    }
  }

  clear(): void {
    this.fns.clear();
  }
}
