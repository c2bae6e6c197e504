/**
 * MicroVMs through the public API: functions deployed with AETHER_ISOLATION=qemu boot real QEMU
 * microVMs (TCG here: no usable KVM), run under the guest kernel, get their env, cannot see the
 * host, and a crashed VM is detected and replaced.
 */
import assert from 'node:assert/strict';
import os from 'node:os';
import { after, before, describe, test } from 'node:test';
import { startAether, type Aether } from './helpers/aether.ts';
import { scrape } from './helpers/metrics.ts';

const PROBE = `
const fs = require('fs');
const os = require('os');
const read = (p) => { try { fs.readFileSync(p); return 'readable'; } catch (e) { return e.code; } };
exports.handler = async (event) => {
  if (event.path === '/exit') process.exit(7);
  return { statusCode: 200, headers: { 'content-type': 'application/json' }, body: JSON.stringify({
    release: os.release(), greeting: process.env.GREETING, shadow: read('/etc/shadow'), uid: process.getuid(),
  }) };
};`;

const SERVER = `require('http').createServer((req, res) => res.end(require('os').release() + ' ' + process.env.GREETING + ' ' + req.url)).listen(process.env.PORT);`;

describe('microVMs (qemu) through the API', () => {
  let a: Aether;
  before(async () => {
    // Boots, not resumes: the boot phases in the metrics are what it checks (microvm-snapshot.test.ts resumes).
    a = await startAether({ isolation: 'qemu', env: { AETHER_VM_SNAPSHOTS: '0' } });
    assert.ok(
      a.logs.some((l) => /"isolation: qemu: (tcg|kvm)/.test(l)),
      'the start-up log names the driver and why',
    );
  });
  after(() => a.stop());

  test('a handler-mode function runs under the guest kernel, with its env, without the host', async () => {
    await a.deploy({ name: 'vm-handler', env_vars: { GREETING: 'hi from the VM' } }, { 'handler.js': PROBE });
    const res = await a.invoke('vm-handler', '/');
    assert.equal(res.status, 200);
    const out = await res.json();
    assert.notEqual(out.release, os.release(), 'the guest kernel, not the host one');
    assert.equal(out.greeting, 'hi from the VM');
    assert.notEqual(out.shadow, 'readable');
    assert.notEqual(out.uid, 0);
    const inv = (await a.api('GET', '/api/functions/vm-handler/invocations')).body;
    assert.equal(inv[0].cold_start, true);
    // The VM's boot, phase by phase, in the metrics: one observation per phase for this one boot.
    const m = await scrape(a.url);
    assert.equal(m.histogramCount('aether_cold_start_duration_seconds', { function: 'vm-handler' }), 1);
    for (const phase of ['vmm', 'kernel', 'init', 'agent']) {
      assert.equal(m.histogramCount('aether_microvm_boot_phase_seconds', { phase }), 1, phase);
    }
  });

  test('a server-mode function answers through the VM', async () => {
    await a.deploy({ name: 'vm-server', env_vars: { GREETING: 'hello' } }, { 'index.js': SERVER });
    const res = await a.invoke('vm-server', '/path?q=1');
    assert.equal(res.status, 200);
    const [release, greeting, url] = (await res.text()).split(' ');
    assert.notEqual(release, os.release());
    assert.equal(greeting, 'hello');
    assert.equal(url, '/path?q=1');
  });

  test('a VM whose function exits is detected and replaced', async () => {
    const crash = await a.invoke('vm-handler', '/exit');
    assert.equal(crash.status, 502);
    const again = await a.invoke('vm-handler', '/');
    assert.equal(again.status, 200);
  });
});
