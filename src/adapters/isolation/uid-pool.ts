/**
 * Hands out a distinct unprivileged host uid per live instance, so that no two instances share an
 * identity that could signal or read the other's files. A uid is reused only after `release`.
 */
import { unavailable } from '../../core/errors.js';

export class UidPool {
  private readonly inUse = new Set<number>();
  private next: number;

  constructor(
    readonly first = 200_000,
    readonly size = 50_000,
  ) {
    if (!Number.isInteger(first) || first < 1000 || !Number.isInteger(size) || size < 1) {
      throw new Error(`invalid uid range ${first}+${size}`);
    }
    this.next = first;
  }

  acquire(): number {
    if (this.inUse.size >= this.size) throw unavailable(`all ${this.size} sandbox uids are in use`);
    // Round-robin from the last grant: a just-released uid is the last to be handed out again.
    while (this.inUse.has(this.next)) this.advance();
    const uid = this.next;
    this.inUse.add(uid);
    this.advance();
    return uid;
  }

  release(uid: number): void {
    this.inUse.delete(uid);
  }

  private advance(): void {
    this.next = this.next + 1 >= this.first + this.size ? this.first : this.next + 1;
  }
}
