/**
 * Host networking for Firecracker guests: one bridge, one TAP per instance on it, addresses from the
 * bridge's subnet (lowest free first, reused after release), and nftables rules so that guests
 * reach neither each other (bridge-family rule between TAP ports) nor the host (everything from the
 * bridge to the host is dropped, control-plane ports included; MMDS never reaches the TAP, Firecracker
 * answers it in its device model). Egress to the internet is off unless enabled, and then NATed and
 * still barred from private and link-local ranges.
 *
 * The plans are pure (commands as argv + optional stdin); HostNetwork runs them, which needs root
 * and a real host: tests check the plans, not this machine's network.
 */
import { execFile } from 'node:child_process';

export interface NetworkConfig {
  bridge: string; // e.g. aebr0
  /** The bridge's subnet, e.g. 172.30.0.0/24: the bridge takes .1, guests the rest. */
  subnet: string;
  /** TAP names are `<tapPrefix><host part>`: with IFNAMSIZ 16 keep the prefix short. */
  tapPrefix: string;
  /** Off by default: guests reach nothing beyond the bridge. */
  egress?: { uplink: string };
}

export const DEFAULT_NETWORK: NetworkConfig = { bridge: 'aebr0', subnet: '172.30.0.0/24', tapPrefix: 'aetap' };

export interface Command {
  argv: string[];
  stdin?: string;
}

export interface Attachment {
  tap: string;
  /** Guest address with prefix, e.g. 172.30.0.2/24, and its gateway (the bridge). */
  guestIp: string;
  gateway: string;
  /** Locally administered, derived from the address (Firecracker's own convention: 06:00 + IPv4). */
  mac: string;
}

interface Subnet {
  base: number; // network address as a 32-bit number
  prefix: number;
}

export function parseSubnet(cidr: string): Subnet {
  const m = /^(\d+)\.(\d+)\.(\d+)\.(\d+)\/(\d+)$/.exec(cidr);
  const octets = m?.slice(1, 5).map(Number);
  const prefix = Number(m?.[5]);
  if (!octets || octets.some((o) => o > 255) || prefix < 16 || prefix > 29)
    throw new Error(`subnet ${cidr} must be an IPv4 CIDR from /16 to /29`);
  const ip = octets.reduce((acc, o) => acc * 256 + o, 0);
  const size = 2 ** (32 - prefix);
  if (ip % size !== 0) throw new Error(`subnet ${cidr} has host bits set`);
  return { base: ip, prefix };
}

const dotted = (n: number) => [24, 16, 8, 0].map((shift) => Math.floor(n / 2 ** shift) % 256).join('.');

/** Host parts 2..size-2 (.0 is the network, .1 the bridge, the last the broadcast); lowest free first. */
export class IpPool {
  private readonly subnet: Subnet;
  private readonly used = new Set<number>();

  constructor(cidr: string) {
    this.subnet = parseSubnet(cidr);
  }

  get gateway(): string {
    return dotted(this.subnet.base + 1);
  }

  /** A free host part; throws when the subnet is full. */
  take(): number {
    const last = 2 ** (32 - this.subnet.prefix) - 2;
    for (let host = 2; host <= last; host++) {
      if (!this.used.has(host)) {
        this.used.add(host);
        return host;
      }
    }
    throw new Error(`no free address left in ${dotted(this.subnet.base)}/${this.subnet.prefix}`);
  }

  release(host: number): void {
    this.used.delete(host);
  }

  attachment(host: number, tapPrefix: string): Attachment {
    const ip = this.subnet.base + host;
    const mac = [
      '06',
      '00',
      ...dotted(ip)
        .split('.')
        .map((o) => Number(o).toString(16).padStart(2, '0')),
    ].join(':');
    return { tap: `${tapPrefix}${host}`, guestIp: `${dotted(ip)}/${this.subnet.prefix}`, gateway: this.gateway, mac };
  }
}

const PRIVATE_RANGES = '{ 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 169.254.0.0/16, 100.64.0.0/10, 127.0.0.0/8 }';

/** The nftables ruleset (`nft -f -`): replaces our tables only, never anyone else's. */
export function nftRuleset(config: NetworkConfig): string {
  const { bridge, tapPrefix, egress } = config;
  const subnet = `${dotted(parseSubnet(config.subnet).base)}/${parseSubnet(config.subnet).prefix}`;
  const lines = [
    'table bridge aether',
    'delete table bridge aether',
    'table inet aether',
    'delete table inet aether',
    'table bridge aether {',
    '  chain forward {',
    '    type filter hook forward priority 0; policy accept;',
    `    iifname "${tapPrefix}*" oifname "${tapPrefix}*" drop comment "guests never reach each other"`,
    '  }',
    '}',
    'table inet aether {',
    '  chain input {',
    '    type filter hook input priority 0; policy accept;',
    `    iifname "${bridge}" drop comment "guests never reach the host (control-plane ports included)"`,
    '  }',
    '  chain forward {',
    '    type filter hook forward priority 0; policy accept;',
  ];
  if (egress) {
    lines.push(
      `    iifname "${bridge}" ip daddr ${PRIVATE_RANGES} drop comment "egress is to the internet only"`,
      `    iifname "${bridge}" oifname "${egress.uplink}" ip saddr ${subnet} accept`,
      `    iifname "${egress.uplink}" oifname "${bridge}" ct state established,related accept`,
    );
  }
  lines.push(`    iifname "${bridge}" drop`, `    oifname "${bridge}" drop`, '  }');
  if (egress) {
    lines.push(
      '  chain postrouting {',
      '    type nat hook postrouting priority 100; policy accept;',
      `    ip saddr ${subnet} oifname "${egress.uplink}" masquerade`,
      '  }',
    );
  }
  lines.push('}');
  return `${lines.join('\n')}\n`;
}

/** Once per host: the bridge with the gateway address, and the rules. */
export function bridgePlan(config: NetworkConfig): Command[] {
  const pool = new IpPool(config.subnet);
  const prefix = parseSubnet(config.subnet).prefix;
  return [
    { argv: ['ip', 'link', 'add', config.bridge, 'type', 'bridge'] },
    { argv: ['ip', 'addr', 'add', `${pool.gateway}/${prefix}`, 'dev', config.bridge] },
    { argv: ['ip', 'link', 'set', config.bridge, 'up'] },
    ...(config.egress ? [{ argv: ['sysctl', '-w', 'net.ipv4.ip_forward=1'] }] : []),
    { argv: ['nft', '-f', '-'], stdin: nftRuleset(config) },
  ];
}

/** `owner`: the uid of a jailed Firecracker, which must be allowed to open the TAP. */
export function tapPlan(config: NetworkConfig, tap: string, owner?: number): Command[] {
  return [
    { argv: ['ip', 'tuntap', 'add', 'dev', tap, 'mode', 'tap', ...(owner === undefined ? [] : ['user', String(owner)])] },
    { argv: ['ip', 'link', 'set', tap, 'master', config.bridge] },
    { argv: ['ip', 'link', 'set', tap, 'up'] },
  ];
}

export function tapTeardownPlan(tap: string): Command[] {
  return [{ argv: ['ip', 'link', 'del', tap] }];
}

export type CommandRunner = (command: Command) => Promise<void>;

export const runCommand: CommandRunner = (command) =>
  new Promise((resolve, reject) => {
    const [file, ...args] = command.argv;
    const child = execFile(file!, args, (err, _stdout, stderr) =>
      err ? reject(new Error(`${command.argv.join(' ')} failed: ${stderr.trim() || err.message}`)) : resolve(),
    );
    child.stdin?.end(command.stdin);
  });

/** Allocates addresses and TAPs, running the plans with `run` (root on a real host). */
export class HostNetwork {
  private readonly pool: IpPool;
  private ready?: Promise<void>;

  constructor(
    readonly config: NetworkConfig = DEFAULT_NETWORK,
    private readonly run: CommandRunner = runCommand,
  ) {
    this.pool = new IpPool(config.subnet);
  }

  /** `owner`: see tapPlan. */
  async attach(owner?: number): Promise<Attachment & { release(): Promise<void> }> {
    this.ready ??= runAll(this.run, bridgePlan(this.config));
    await this.ready;
    const host = this.pool.take();
    const attachment = this.pool.attachment(host, this.config.tapPrefix);
    try {
      await runAll(this.run, tapPlan(this.config, attachment.tap, owner));
    } catch (err) {
      await runAll(this.run, tapTeardownPlan(attachment.tap)).catch(() => {}); // a half-made TAP
      this.pool.release(host);
      throw err;
    }
    let released: Promise<void> | undefined;
    const release = () => (released ??= runAll(this.run, tapTeardownPlan(attachment.tap)).finally(() => this.pool.release(host)));
    return { ...attachment, release };
  }
}

async function runAll(run: CommandRunner, commands: Command[]): Promise<void> {
  for (const command of commands) await run(command);
}
