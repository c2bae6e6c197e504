/**
 * The source layout's rules, checked on the real import graph of src/ (tools/import-graph.ts): no
 * import cycles, the core knows no adapter, the guest side knows no driver, the agent imports only
 * node's builtins and itself (it is mounted into instances alone), and drivers do not import
 * sideways from each other: what two of them share lives in a module both import. And the one list
 * of isolation drivers (drivers.ts) is the one the settings and the docs show.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { isBuiltin } from 'node:module';
import { describe, test } from 'node:test';
import { ISOLATION_DRIVERS, ISOLATION_MODES } from '../src/adapters/isolation/drivers.js';
import { loadConfig } from '../src/config.js';
import { cycles, importGraph } from '../tools/import-graph.ts';

const graph = importGraph();

/** Imports from modules under `from` to modules under `to`, as "importer -> imported". */
function imports(from: string, to: string): string[] {
  return [...graph.local].flatMap(([file, targets]) =>
    file.startsWith(from) ? targets.filter((t) => t.startsWith(to)).map((t) => `${file} -> ${t}`) : [],
  );
}

describe('source layout', () => {
  test('the graph is the real one: it sees the lifecycle used by every driver', () => {
    for (const driver of ['sandbox/host.ts', 'sandbox/none.ts', 'microvm/qemu/vm.ts', 'microvm/firecracker/vmm.ts']) {
      const targets = graph.local.get(`adapters/isolation/${driver}`);
      assert.ok(targets?.includes('adapters/isolation/instance/instance.ts'), `${driver} imports the lifecycle`);
    }
  });

  test('no import cycles', () => {
    assert.deepEqual(cycles(graph.local), []);
  });

  test('the core imports no adapter, composition root or guest module', () => {
    for (const other of ['adapters/', 'guest/', 'server.ts', 'worker.ts', 'gateway.ts', 'compose.ts', 'config.ts']) {
      assert.deepEqual(imports('core/', other), []);
    }
  });

  test('the guest side imports no driver and nothing of the host core', () => {
    assert.deepEqual(imports('guest/', 'adapters/'), []);
    assert.deepEqual(imports('guest/', 'core/'), []);
  });

  test('the agent imports only node builtins and its own modules', () => {
    for (const [file, targets] of graph.local) {
      if (!file.startsWith('guest/agent/')) continue;
      assert.deepEqual(
        targets.filter((t) => !t.startsWith('guest/agent/')),
        [],
        `${file} reaches outside the agent directory`,
      );
      assert.deepEqual(
        graph.external.get(file)!.filter((name) => !isBuiltin(name)),
        [],
        `${file} imports a package`,
      );
    }
  });

  test('drivers do not import sideways', () => {
    const isolation = 'adapters/isolation/';
    const pairs = [
      ['microvm/qemu/', 'microvm/firecracker/'],
      ['microvm/firecracker/', 'microvm/qemu/'],
      ['sandbox/', 'microvm/'],
      ['microvm/', 'sandbox/'],
      ['instance/', 'sandbox/'],
      ['instance/', 'microvm/'],
    ];
    for (const [from, to] of pairs) assert.deepEqual(imports(isolation + from, isolation + to), []);
  });
});

describe('one list of isolation drivers', () => {
  test('AETHER_ISOLATION takes auto and exactly the listed drivers', () => {
    assert.deepEqual(ISOLATION_MODES, ['auto', 'firecracker', 'qemu', 'gvisor', 'bwrap', 'none']);
    for (const mode of ISOLATION_MODES) assert.equal(loadConfig({ AETHER_ISOLATION: mode }).isolation, mode);
    assert.throws(() => loadConfig({ AETHER_ISOLATION: 'docker' }), /AETHER_ISOLATION/);
  });

  test("docs/configuration.md's driver table is the list: names, descriptions, what each needs", () => {
    const docs = readFileSync(new URL('../docs/configuration.md', import.meta.url), 'utf8');
    const section = docs.slice(docs.indexOf('### Isolation drivers'));
    const table = section.slice(section.indexOf('\n|'), section.indexOf('\n\n', section.indexOf('\n|')));
    const rows = [...table.matchAll(/^\| `(\w+)` \| (.*?) \| (.*?) ?\|$/gm)].map(([, name, what, install]) => [name, { what, install }]);
    assert.deepEqual(Object.fromEntries(rows), ISOLATION_DRIVERS);
  });
});
