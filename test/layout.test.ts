/**
 * The source layout's rules, checked on the real import graph of src/ (tools/import-graph.ts): no
 * import cycles, the core knows no adapter, the guest side knows no driver, the agent imports only
 * node's builtins and itself (it is mounted into instances alone), and drivers do not import
 * sideways from each other: what two of them share lives in a module both import.
 */
import assert from 'node:assert/strict';
import { isBuiltin } from 'node:module';
import { describe, test } from 'node:test';
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
